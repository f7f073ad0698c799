"""The launch file (peripherals.toml): validation reports a bad entry by key and keeps the others; nothing raises."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.supervisor.launchfile import PeripheralSpec, parse_launch_text, read_launch_file
from actors.supervisor.peripherals import LogWriter, join_record

CONFIG = Path("/robot/config")
UUID = "3484b12d-5a6b-4c7d-8e9f-0123456789ab"


def test_full_entry_and_defaults() -> None:
    text = f"""
[peripherals.llm]
command = "python3 llm.py --model 'big one'"
cwd = "../llm"
env = {{ OLLAMA_HOST = "127.0.0.1:11434", THREADS = 4, VERBOSE = true }}
restart = "always"
after = ["tts"]
name = "LLM_Engine"
uuid = "{UUID}"
stdin = true
stop_timeout = 2

[peripherals.tts]
command = ["python3", "tts.py"]
stdin = "pty"
"""
    launch = parse_launch_text(text, CONFIG)
    assert launch.problems == []
    llm, tts = launch.peripherals["llm"], launch.peripherals["tts"]
    assert llm.command == ("python3", "llm.py", "--model", "big one")
    assert llm.cwd == "/robot/llm" and llm.env == (("OLLAMA_HOST", "127.0.0.1:11434"), ("THREADS", "4"), ("VERBOSE", "true"))
    assert (llm.restart, llm.after, llm.name, llm.uuid, llm.stdin, llm.stop_timeout) == ("always", ("tts",), "LLM_Engine", UUID, "pipe", 2.0)
    assert (tts.cwd, tts.name, tts.restart, tts.stdin, tts.uuid) == (str(CONFIG), "tts", "on-failure", "pty", None)


def table(key: str, *lines: str) -> str:
    """One [peripherals.<key>] table of a peripherals.toml, with these lines."""
    return f"[peripherals.{key}]\n" + "".join(line + "\n" for line in lines)


def test_bad_entries_are_reported_by_key_and_skipped() -> None:
    text = "".join([
        table('good', 'command = "ok"'),
        table('norestart', 'command = "x"', 'restart = "sometimes"'),
        table('nocommand', 'cwd = "."'),
        table('typo', 'command = "x"', 'restrat = "always"'),
        table('baduuid', 'command = "x"', 'uuid = "not-a-uuid"'),
        table('badquote', 'command = "python \'unclosed"'),
        table('spacename', 'command = "x"', 'name = "two words"'),
        table('negative', 'command = "x"', 'stop_timeout = -1'),
        table('"../escape"', 'command = "x"'),
        table('notatable'),
        table('dep', 'command = "x"', 'after = ["good", "ghost", "dep"]'),
    ])
    launch = parse_launch_text(text.replace("[peripherals.notatable]\n", "") + "[peripherals]\nscalar = 3\n", CONFIG)
    assert set(launch.peripherals) == {"good", "dep"}
    assert launch.peripherals["dep"].after == ("good",)
    joined = "\n".join(launch.problems)
    for key in ("norestart", "nocommand", "typo", "baduuid", "badquote", "spacename", "negative", "../escape", "scalar"):
        assert f"peripherals.{key}:" in joined, key
    assert "'ghost'" in joined and "'dep'" in joined


def test_an_after_cycle_is_reported_and_broken_so_every_entry_still_starts() -> None:
    text = """
[peripherals.asr]
command = "x"
after = ["tts"]
[peripherals.llm]
command = "x"
after = ["asr"]
[peripherals.tts]
command = "x"
after = ["llm"]
[peripherals.input]
command = "x"
after = ["asr"]
"""
    launch = parse_launch_text(text, CONFIG)
    assert set(launch.peripherals) == {"asr", "llm", "tts", "input"}
    cycles = [p for p in launch.problems if "cycle" in p]
    assert len(cycles) == 1 and "asr -> tts -> llm -> asr" in cycles[0], launch.problems
    assert launch.peripherals["llm"].after == (), "the edge that closed the cycle is ignored"
    assert (launch.peripherals["asr"].after, launch.peripherals["tts"].after) == (("tts",), ("llm",))
    assert launch.peripherals["input"].after == ("asr",), "entries outside the cycle keep their order"


def test_a_long_after_chain_is_no_problem() -> None:
    entries = "".join(f'[peripherals.p{i}]\ncommand = "x"\nafter = ["p{i + 1}"]\n' for i in range(3000))
    launch = parse_launch_text(entries + '[peripherals.p3000]\ncommand = "x"\nafter = ["p0"]\n', CONFIG)
    assert len(launch.peripherals) == 3001
    assert sum("cycle" in p for p in launch.problems) == 1


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    assert read_launch_file(tmp_path) is None
    (tmp_path / "peripherals.toml").write_text("[peripherals.x\ncommand=")
    broken = read_launch_file(tmp_path)
    assert broken is not None and not broken.peripherals and "not valid TOML" in broken.problems[0]
    (tmp_path / "peripherals.toml").write_bytes(b"\xff\xfe")
    assert "cannot be read" in read_launch_file(tmp_path).problems[0]


printable = st.characters(blacklist_categories=("Cc", "Cs"))  # TOML strings hold no raw control characters
toml_scalars = st.one_of(st.text(printable, max_size=20), st.integers(-10**6, 10**6), st.booleans(),
                         st.floats(allow_nan=False, allow_infinity=False), st.lists(st.text(printable, max_size=8), max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(printable, min_size=1, max_size=12), st.dictionaries(
    st.sampled_from(["command", "cwd", "env", "restart", "after", "name", "uuid", "stdin", "start_timeout", "stop_timeout",
                     "flap_limit", "log_max_bytes", "other"]), toml_scalars, max_size=6), max_size=5))
def test_any_table_validates_without_raising(tables: dict) -> None:
    """Whatever the tables hold, each entry is either a spec or exactly one problem naming its key."""
    def toml(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)  # JSON strings, numbers, booleans and arrays are TOML too

    text = "".join(f"[peripherals.{toml(key)}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in entry.items())
                   for key, entry in tables.items())
    launch = parse_launch_text(text, CONFIG)
    assert not any("not valid TOML" in p for p in launch.problems), text
    for key in tables:
        named = [p for p in launch.problems if p.startswith(f"peripherals.{key}: ") and p.endswith("skipped")]
        assert (key in launch.peripherals) != bool(named), (key, launch.problems)
        if key in launch.peripherals:
            spec = launch.peripherals[key]
            assert spec.command and all(isinstance(word, str) for word in spec.command) and "/" not in key


def spec(**values: object) -> PeripheralSpec:
    return PeripheralSpec(key="llm", command=("x",), cwd="/", **values)


def test_join_by_uuid_then_name_or_suffix() -> None:
    """uuid wins when given; else the name or name_<N>, online first, then the latest seen; never a mere prefix."""
    records = [{"name": "LLM_Engine", "uuid": "a", "online": False, "last_seen": 5.0},
               {"name": "LLM_Engine_1", "uuid": "b", "online": True, "last_seen": 3.0},
               {"name": "LLM_Engine_2", "uuid": "c", "online": True, "last_seen": 4.0},
               {"name": "LLM_Engine_x", "uuid": "d", "online": True, "last_seen": 9.0},
               {"name": "LLM_EngineX", "uuid": "e", "online": True, "last_seen": 9.0}]
    assert join_record(spec(name="LLM_Engine"), records)["uuid"] == "c"
    assert join_record(spec(name="LLM_Engine", uuid=UUID), records) is None
    assert join_record(spec(name="LLM_Engine", uuid=UUID), records + [{"name": "other", "uuid": UUID}])["name"] == "other"
    assert join_record(spec(name="TTS"), records) is None


def test_log_writer_rotates_and_keeps_the_tail(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "p.log", max_bytes=1000, backups=2)
    for index in range(100):
        writer.write(f"line {index:03d} ".encode() + b"x" * 40 + b"\n")
    writer.write(b"partial")
    writer.write(b" end\n")
    writer.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["p.log", "p.log.1", "p.log.2"]
    assert all((tmp_path / n).stat().st_size <= 1000 for n in names)
    assert writer.tail[-1] == "partial end" and writer.tail[-2].startswith("line 099")
