"""Settings: layers and their precedence, errors naming file/key/line, examples, redaction."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agent.config import (
    REDACTED,
    Settings,
    _line_of,
    check_settings_file,
    load_settings,
    parse_duration,
)
from agent.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.toml"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDGE_AGENT_* variable of the surrounding shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("EDGE_AGENT_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- layers ---------------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.name == socket.gethostname()
    assert settings.groups == ["devices"]
    assert settings.state_dir is None
    assert settings.log_level == "info"
    assert settings.connect.url is None
    assert settings.connect.token is None
    assert (settings.hub.host, settings.hub.port) == ("127.0.0.1", 8080)
    limits = settings.hub.limits
    assert (limits.max_frame_bytes, limits.max_content_bytes) == (65536, 32768)
    assert (limits.rate_burst, limits.rate_per_second) == (100, 50.0)
    assert (limits.max_errors, limits.error_window_seconds) == (20, 5.0)
    assert limits.idle_timeout_seconds == 60.0
    assert limits.max_connections_per_user == 30
    assert limits.max_outbound_bytes == 1048576


def test_values_come_from_the_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name = "porch"
        groups = ["front-door", "doorbells"]
        state_dir = "~/edge-state"
        log_level = "DEBUG"

        [connect]
        url = "wss://hub.example.net/ws"
        token = "t0ken"

        [hub.limits]
        rate_burst = 7
        """,
    )
    settings = load_settings(path)
    assert settings.name == "porch"
    assert settings.groups == ["front-door", "doorbells"]
    assert settings.state_dir == Path.home() / "edge-state"
    assert settings.log_level == "debug"
    assert settings.connect.url == "wss://hub.example.net/ws"
    assert settings.connect.token is not None
    assert settings.connect.token.get_secret_value() == "t0ken"
    assert settings.hub.limits.rate_burst == 7
    assert settings.hub.limits.rate_per_second == 50.0


def test_environment_overrides_the_file_with_nesting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[hub]\nport = 8081\nhost = "127.0.0.2"\n[hub.limits]\nmax_errors = 3\n')
    monkeypatch.setenv("EDGE_AGENT_HUB__PORT", "9000")
    monkeypatch.setenv("EDGE_AGENT_HUB__LIMITS__RATE_PER_SECOND", "7.5")
    monkeypatch.setenv("EDGE_AGENT_CONNECT__URL", "ws://127.0.0.1:9000/ws")
    monkeypatch.setenv("EDGE_AGENT_NAME", "from-env")
    settings = load_settings(path)
    assert settings.hub.port == 9000
    assert settings.hub.host == "127.0.0.2"  # untouched by the environment
    assert settings.hub.limits.rate_per_second == 7.5
    assert settings.hub.limits.max_errors == 3
    assert settings.connect.url == "ws://127.0.0.1:9000/ws"
    assert settings.name == "from-env"


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        ("front-door, doorbells", ["front-door", "doorbells"]),
        ('["a", "b,c"]', ["a", "b,c"]),
        ("", []),
    ],
)
def test_groups_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, groups: list[str]
) -> None:
    monkeypatch.setenv("EDGE_AGENT_GROUPS", value)
    assert load_settings().groups == groups


@pytest.mark.parametrize(
    ("text", "groups"),
    [('groups = "home"', ["home"]), ('groups = "home, porch"', ["home", "porch"])],
)
def test_groups_as_text_in_a_file_are_a_list(tmp_path: Path, text: str, groups: list[str]) -> None:
    # Documented (README, config/agent.toml): the environment's friendly form works in a file.
    assert check_settings_file(write(tmp_path, text + "\n")).groups == groups


def test_empty_environment_value_means_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[connect]\nurl = "ws://hub.lan/ws"\ntoken = "x"\n')
    monkeypatch.setenv("EDGE_AGENT_CONNECT__URL", "")
    assert load_settings(path).connect.url is None


def test_overrides_beat_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[hub]\nport = 8081\nhost = "127.0.0.2"\n')
    monkeypatch.setenv("EDGE_AGENT_HUB__PORT", "9000")
    monkeypatch.setenv("EDGE_AGENT_LOG_LEVEL", "error")
    settings = load_settings(
        path, hub__port=0, hub={"limits": {"max_errors": 4}}, state_dir=tmp_path, log_level=None
    )
    assert settings.hub.port == 0
    assert settings.hub.host == "127.0.0.2"
    assert settings.hub.limits.max_errors == 4
    assert settings.state_dir == tmp_path
    assert settings.log_level == "error"  # None overrides are skipped


def test_file_path_from_edge_agent_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'name = "from-file"\n')
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(path))
    assert load_settings().name == "from-file"
    other = write(tmp_path, 'name = "explicit"\n', name="other.toml")
    assert load_settings(other).name == "explicit"


def test_check_settings_file_ignores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[hub]\nport = 8081\n")
    monkeypatch.setenv("EDGE_AGENT_HUB__PORT", "not a port")
    assert check_settings_file(path).hub.port == 8081
    with pytest.raises(ConfigError, match="EDGE_AGENT_HUB__PORT"):
        load_settings(path)


def test_settings_built_directly_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_HUB__PORT", "9000")
    assert Settings().hub.port == 8080
    assert Settings(hub={"port": 0}).hub.port == 0  # type: ignore[arg-type]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ('[hub]\nport = "eighty"\n', "hub.port", 2, ["valid integer", "'eighty'"]),
        ("[hub]\nport = 70000\n", "hub.port", 2, ["less than or equal to 65535"]),
        ('name = "x"\n\n[hub]\nhost = "h"\nprot = 9000\n', "hub.prot", 5, ["did you mean 'port'"]),
        ('nmae = "porch"\n', "nmae", 1, ["unknown setting", "did you mean 'name'"]),
        ("[hubb]\nport = 1\n", "hubb", 1, ["unknown setting 'hubb'", "did you mean 'hub'"]),
        ("[[serials]]\nport = 1\n", "serials", 1, ["unknown setting 'serials' at the top level"]),
        ("[hub.limits]\nrate_burst = 0\n", "hub.limits.rate_burst", 2, ["greater than 0"]),
        (
            "[hub.limits]\nmax_content_bytes = 70000\n",
            "hub.limits",
            1,
            ["max_content_bytes (70000) must not exceed max_frame_bytes (65536)"],
        ),
        ('hub.port = "x"\n', "hub.port", 1, ["valid integer"]),
        ('hub = { host = "h", port = "x" }\n', "hub.port", 1, ["valid integer"]),
        ('[hub]\ntls_cert = "/etc/c.pem"\n', "hub", 1, ["tls_key is not set"]),
        ('[hub]\npublic_url = "hub.example.net"\n', "hub.public_url", 2, ["http://HOST"]),
        ('[connect]\nurl = "ftp://hub/ws"\n', "connect.url", 2, ["ws://HOST", "wss://HOST"]),
        ('groups = ["a",\n  7]\n', "groups[1]", 1, ["valid string", "(got 7)"]),
        ('groups = [""]\n', "groups", 1, ["1 to 128 characters"]),
        ('log_level = "loud"\n', "log_level", 1, ["not a log level", "debug, info"]),
        ('name = "bad name!"\n', "name", 1, ["not a valid account name"]),
        ('name = "7c9e6679-7425-40de-944b-e07fc1f90ae7"\n', "name", 1, ["looks like a user id"]),
        ("state_dir = 5\n", "state_dir", 1, ["path"]),
        ('_secrets_dir = "/tmp"\n', "_secrets_dir", 1, ["unknown setting"]),
    ],
)
def test_bad_values_name_file_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, words: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    error = caught.value
    assert (error.file, error.key, error.line) == (path, key, line)
    rendered = str(error)
    assert rendered.startswith(f"{path}:{line}, key {key!r}: ")
    for word in words:
        assert word in rendered


def test_every_error_is_reported_first_line_first(tmp_path: Path) -> None:
    path = write(tmp_path, '[hub]\nport = "x"\n\n[hub.limits]\nrate_burst = -1\nmax_errors = "y"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    error = caught.value
    assert (error.key, error.line) == ("hub.port", 2)
    lines = str(error).splitlines()
    assert len(lines) == 3
    assert lines[1].strip() == f"also: {path}:5, key 'hub.limits.rate_burst': " + (
        "Input should be greater than 0 (got -1)"
    )
    assert f"{path}:6, key 'hub.limits.max_errors'" in lines[2]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[hub]\nport = 8080\nhost = \n", 3, ["Invalid value", "column 8"]),
        ("[hub]\nport = 1\nport = 2\n", 3, ["Cannot overwrite a value"]),
        ('name = "porch\n', 1, ["invalid TOML"]),
        ("[hub\n", 1, ["invalid TOML"]),
    ],
)
def test_toml_syntax_errors_carry_the_line(
    tmp_path: Path, text: str, line: int, words: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert (caught.value.file, caught.value.line) == (path, line)
    for word in words:
        assert word in str(caught.value)


def test_syntax_error_names_the_key_on_that_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nport = 80 80\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert (caught.value.key, caught.value.line) == ("hub.port", 2)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="settings file not found") as caught:
        load_settings(tmp_path / "absent.toml")
    assert caught.value.file == tmp_path / "absent.toml"
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(latin1)
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(tmp_path)


def test_environment_errors_name_the_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[hub]\nport = 8081\n")
    monkeypatch.setenv("EDGE_AGENT_HUB__PORT", "eighty")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert (caught.value.file, caught.value.key, caught.value.line) == (None, "hub.port", None)
    assert "from environment variable EDGE_AGENT_HUB__PORT" in str(caught.value)


def test_unknown_nested_environment_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_HUB__PROT", "9000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.key == "hub.prot"
    assert "did you mean 'port'" in str(caught.value)
    assert "EDGE_AGENT_HUB__PROT" in str(caught.value)


def test_override_errors_say_so(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nport = 8081\n")
    with pytest.raises(ConfigError, match="given as an override") as caught:
        load_settings(path, hub__port=-1)
    assert (caught.value.file, caught.value.key) == (None, "hub.port")


def test_errors_never_echo_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, '[connect]\ntoken = 123456789\nurl = "ftp://h/ws?token=s3cr3t"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    text = str(caught.value)
    assert "connect.token" in text
    assert "connect.url" in text
    assert "123456789" not in text
    assert "s3cr3t" not in text


# -- examples -------------------------------------------------------------------------------


def test_the_four_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"agent.toml", "hub.toml", "doorbell.toml", "field-device.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_example_loads(path: Path) -> None:
    settings = load_settings(path)
    assert settings == check_settings_file(path)
    assert settings.groups or path.name == "hub.toml"


# Tables every example shows (set, or commented out with their keys to copy).
SHOWN_TABLES = ("metrics", "push", "hub.limits")
_TABLE_LINE = re.compile(r"^(?:#\s*)?\[([a-z_.]+)\]\s*$")
_COMMENTED_KEY = re.compile(r"^#\s*([a-z_]+\s*=.*)$")


def commented_settings(text: str, tables: tuple[str, ...]) -> str:
    """The commented-out keys of ``tables`` in ``text``, uncommented, as a TOML document."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if header := _TABLE_LINE.match(line):
            current = header.group(1)
        elif current in tables and (key := _COMMENTED_KEY.match(line)):
            found.setdefault(current, []).append(key.group(1))
        elif not line.startswith("#"):
            current = None if line.strip() else current
    return "".join(f"[{name}]\n" + "\n".join(keys) + "\n" for name, keys in found.items())


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_examples_show_metrics_push_and_limits(tmp_path: Path, path: Path) -> None:
    text = path.read_text()
    for table in SHOWN_TABLES:
        assert f"[{table}]" in text, f"{path.name} does not show [{table}]"
    # What the examples suggest is valid once uncommented.
    uncommented = commented_settings(text, (*SHOWN_TABLES, "push.outbox"))
    assert uncommented
    check_settings_file(write(tmp_path, uncommented))


def test_examples_say_what_they_are() -> None:
    doorbell = check_settings_file(CONFIG_DIR / "doorbell.toml")
    assert doorbell.name == "front-door"
    assert doorbell.connect.url is not None
    assert doorbell.connect.url.startswith("wss://")
    assert doorbell.connect.token_file is not None
    field_device = check_settings_file(CONFIG_DIR / "field-device.toml")
    assert field_device.state_dir == Path("/var/lib/edge-agent")
    assert check_settings_file(CONFIG_DIR / "agent.toml").connect.url is None


# -- redaction ------------------------------------------------------------------------------


def test_redacted_hides_tokens_and_url_credentials(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[connect]\nurl = "wss://dev:pa55@hub.lan/ws?token=abc.def&x=1"\ntoken = "tok-123"\n',
    )
    data = load_settings(path).redacted()
    text = json.dumps(data)  # plain JSON-able data
    assert data["connect"]["token"] == REDACTED
    assert data["connect"]["url"] == f"wss://dev:{REDACTED}@hub.lan/ws?token={REDACTED}&x=1"
    for secret in ("tok-123", "pa55", "abc.def"):
        assert secret not in text
    assert data["hub"]["limits"]["rate_burst"] == 100


@pytest.mark.parametrize(
    ("database", "backplane", "shown_database", "shown_backplane"),
    [
        (
            "postgresql://u:pw-db-1@h/db",
            "redis://:pw-bp-1@h",
            f"postgresql://u:{REDACTED}@h/db",
            f"redis://:{REDACTED}@h",
        ),
        (
            "postgres://hub:pw-db-2@db.lan:5432/edge?sslmode=require&password=pw-db-3",
            "rediss://node:pw-bp-2@redis.lan:6380/2",
            f"postgres://hub:{REDACTED}@db.lan:5432/edge?sslmode=require&password={REDACTED}",
            f"rediss://node:{REDACTED}@redis.lan:6380/2",
        ),
    ],
)
def test_config_show_never_prints_a_password_in_a_url(
    tmp_path: Path, database: str, backplane: str, shown_database: str, shown_backplane: str
) -> None:
    # The masking is agent.logs.redact_url, the same the log filters use; a real process.
    from agent.logs import redact, redact_url

    path = write(tmp_path, f'[hub]\ndatabase = "{database}"\nbackplane = "{backplane}"\n')
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_AGENT_")}
    outputs = []
    for extra in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "config", "show", *extra, "--config", str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=CONFIG_DIR.parent,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, "")
        outputs.append(done.stdout)
    assert json.loads(outputs[1])["hub"]["database"] == shown_database
    assert json.loads(outputs[1])["hub"]["backplane"] == shown_backplane
    assert f'database = "{shown_database}"' in outputs[0]
    for output in outputs:
        assert "pw-" not in output
    assert (redact_url(database), redact(f"connecting to {backplane}")) == (
        shown_database,
        f"connecting to {shown_backplane}",
    )


def test_url_redaction_keeps_everything_but_the_secrets() -> None:
    from agent.logs import redact_url

    assert redact_url("wss://hub.lan/ws?x=a%20b+c&token=T&keyframe=1#top") == (
        f"wss://hub.lan/ws?x=a%20b+c&token={REDACTED}&keyframe=1#top"
    )
    # Generated passwords with / or @ pasted unencoded are masked whole.
    assert redact_url("redis://u:p@ss/w+rd=@r:1/0") == f"redis://u:{REDACTED}@r:1/0"
    assert redact_url("redis://u:p@ss@r:1/0") == f"redis://u:{REDACTED}@r:1/0"
    assert redact_url("https://[::1]:8443/?access_key=K&sig=S") == (
        f"https://[::1]:8443/?access_key={REDACTED}&sig={REDACTED}"
    )
    plain_urls = (
        "sqlite",
        "memory",
        "redis://r:6379/0",
        "postgresql://hub@db/edge",
        "https://h/users/a:b@c",  # a path, not userinfo
        "a:b@c",
    )
    for plain in plain_urls:
        assert redact_url(plain) == plain


def test_redacted_keeps_unset_secrets_as_none() -> None:
    data = Settings().redacted()
    assert data["connect"]["token"] is None
    assert data["connect"]["url"] is None


class _PushSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vapid_private_key: SecretStr
    subject: str = "mailto:ops@example.net"


class _SettingsWithPush(Settings):
    push: list[_PushSection] = Field(default_factory=list)


def test_redaction_covers_any_secret_field_a_later_section_adds() -> None:
    settings = _SettingsWithPush(
        push=[{"vapid_private_key": "PRIVATE-KEY-PEM"}],  # type: ignore[list-item]
        connect={"token": "tok"},  # type: ignore[arg-type]
    )
    data = settings.redacted()
    assert data["push"] == [{"vapid_private_key": REDACTED, "subject": "mailto:ops@example.net"}]
    assert "PRIVATE-KEY-PEM" not in json.dumps(data)


# -- calls and media ------------------------------------------------------------------------


def test_calls_video_and_audio_default_to_a_pattern_a_tone_and_people() -> None:
    settings = load_settings()
    assert settings.calls.max_calls == 4
    assert settings.calls.allow_roles == ["admin", "user"]
    assert settings.calls.ice_servers == []  # never an implicit public STUN server
    assert (settings.calls.host_interfaces, settings.calls.host_addresses) == ([], [])
    assert (settings.video.source, settings.video.width, settings.video.height) == (
        "pattern",
        640,
        480,
    )
    assert settings.video.codecs == ["VP8", "H264"]
    assert (settings.audio.source, settings.audio.sink) == ("tone", "null")


def test_calls_and_media_from_toml_map_onto_the_engines(tmp_path: Path) -> None:
    from agent.media import ExecConfig, FileSinkConfig, MicrophoneConfig, StreamFormat, VideoCodec
    from agent.media.settings import media_config, sink_config
    from agent.rtc.ice import IceServer
    from agent.rtc.settings import call_policy, ice_options

    path = write(
        tmp_path,
        """
        [calls]
        allow_users = ["Alice"]
        allow_groups = ["family"]
        allow_roles = ["admin"]
        max_calls = 2
        host_addresses = ["192.0.2.10"]
        ipv6 = false
        [[calls.ice_servers]]
        urls = "turn:turn.example.net:3478?transport=tcp"
        username = "porch"
        credential = "turn-secret"

        [video]
        source = "exec"
        command = "rpicam-vid -t 0 --inline -o -"
        fps = 25
        codecs = ["h264"]
        keyframe_interval = 30

        [audio]
        source = "alsa"
        device = "plughw:1,0"
        sink = "file"
        file = "~/talkback.wav"
        """,
    )
    settings = load_settings(path)
    config = media_config(settings.video, settings.audio)
    assert config.video == ExecConfig(
        ("rpicam-vid", "-t", "0", "--inline", "-o", "-"), StreamFormat.H264, 25
    )
    assert config.audio == MicrophoneConfig("alsa", "plughw:1,0")
    assert config.codecs == (VideoCodec.H264,)
    assert config.encoder.keyframe_interval == 30
    assert config.fallback is not None
    assert (config.fallback.width, config.fallback.height) == (640, 480)
    assert sink_config(settings.audio) == FileSinkConfig(Path("~/talkback.wav").expanduser())
    ice = ice_options(settings.calls)
    assert ice.servers == (
        IceServer(("turn:turn.example.net:3478?transport=tcp",), "porch", "turn-secret"),
    )
    assert (ice.addresses, ice.ipv6) == (("192.0.2.10",), False)
    policy = call_policy(settings.calls)
    assert policy.allow_users == {"alice"}
    assert (policy.allow_groups, policy.allow_roles, policy.max_calls) == (
        {"family"},
        {"admin"},
        2,
    )
    assert "turn-secret" not in json.dumps(settings.redacted())


def test_v4l2_pattern_and_sinks_map_too() -> None:
    from agent.media import NullSinkConfig, SpeakerConfig, TestPatternConfig, ToneConfig, V4L2Config
    from agent.media.settings import media_config, sink_config

    settings = Settings(
        video={"source": "v4l2", "device": "/dev/video2", "input_format": "mjpeg"},  # type: ignore[arg-type]
        audio={"sink": "speaker", "tone_frequency": 1000},  # type: ignore[arg-type]
    )
    config = media_config(settings.video, settings.audio)
    assert config.video == V4L2Config("/dev/video2", 640, 480, 30, "mjpeg")
    assert config.audio == ToneConfig(frequency=1000)
    assert sink_config(settings.audio) == SpeakerConfig("default")
    assert sink_config(Settings().audio) == NullSinkConfig()
    assert media_config(Settings().video, Settings().audio).video == TestPatternConfig()


def test_components_own_their_settings_and_reading_them_loads_no_heavy_stack() -> None:
    # [video]/[audio] belong to agent.media, [hub] to agent.hub, [connect] to the client and
    # [metrics] to agent.metrics; agent.config composes them. Reading settings and mapping
    # them onto the media engine's records must load neither aiortc, PyAV, the web server
    # nor the client's network stack (a fresh process: this one has them loaded).
    from agent import metrics
    from agent.client import settings as client_settings
    from agent.hub import settings as hub_settings
    from agent.media import settings as media_settings

    assert Settings.model_fields["video"].annotation is media_settings.VideoSettings
    assert Settings.model_fields["audio"].annotation is media_settings.AudioSettings
    assert Settings.model_fields["hub"].annotation is hub_settings.HubSettings
    assert Settings.model_fields["connect"].annotation is client_settings.ConnectSettings
    assert Settings.model_fields["metrics"].annotation is metrics.MetricsSettings
    probe = (
        "import sys\n"
        "from agent.config import Settings\n"
        "from agent.media import MediaConfig, media_config, sink_config\n"
        "s = Settings()\n"
        "assert isinstance(media_config(s.video, s.audio), MediaConfig), 'not a MediaConfig'\n"
        "sink_config(s.audio)\n"
        "heavy = ('aiortc', 'av', 'aioice', 'fastapi', 'uvicorn', 'websockets', 'aiohttp')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=CONFIG_DIR.parent,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[[calls.ice_servers]]\nurls = ["http://x"]', "calls.ice_servers[0].urls",
         "is not a STUN or TURN URL"),
        ('[[calls.ice_servers]]\nurls = ["turn:x"]', "calls.ice_servers[0]",
         "needs username and credential"),
        ('[calls]\nhost_addresses = ["10.0.0.300"]', "calls.host_addresses",
         "is not an IP address"),
        ('[calls]\nhost_interfaces = ["eth0; rm"]', "calls.host_interfaces",
         "is not an interface name"),
        ("[calls]\nmax_calls = 0", "calls.max_calls", "greater than or equal to 1"),
        ('[calls]\nallow_roles = ["root"]', "calls.allow_roles[0]", "'admin', 'user'"),
        ('[video]\nsource = "exec"', "video", 'needs command'),
        ('[video]\nsource = "usb"', "video.source", "'pattern', 'v4l2' or 'exec'"),
        ('[video]\ncodecs = ["AV1"]', "video.codecs[0]", "'VP8' or 'H264'"),
        ('[video]\ninput_format = "MJPEG!"', "video.input_format", "not a V4L2 input format"),
        ("[video]\nwidth = 8", "video.width", "greater than or equal to 16"),
        ('[audio]\nsink = "file"', "audio", "needs file"),
        ("[audio]\ntone_frequency = 440", "audio.tone_frequency", "multiple of 50 Hz"),
        ("[audio]\nvolume = 3", "audio.volume", "unknown setting 'volume'"),
    ],
)  # fmt: skip
def test_bad_calls_and_media_settings_are_named(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.key == key
    assert message in str(caught.value)
    assert caught.value.line is not None


def test_the_doorbell_example_uses_the_pi_camera_and_a_turn_server() -> None:
    doorbell = check_settings_file(CONFIG_DIR / "doorbell.toml")
    assert doorbell.video.source == "exec"
    assert doorbell.video.command[:2] == ["rpicam-vid", "-t"]
    assert doorbell.video.codecs[0] == "H264"
    assert doorbell.calls.host_interfaces == ["wlan0"]
    turn = doorbell.calls.ice_servers[1]
    assert turn.credential is not None
    assert doorbell.redacted()["calls"]["ice_servers"][1]["credential"] == REDACTED


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600),
        ("0", 0),
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("30d", 2592000),
        ("2w", 1209600),
        ("1h30m", 5400),
        (" 30D ", 2592000),
        (42, 42),
    ],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "d", "30x", "1.5h", "-3", "1h 30m", "30 days", "9" * 13, "1h" * 40, -1, True]
)
def test_parse_duration_refuses_with_a_clear_text(text: str | int) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*use whole seconds"):
        parse_duration(text)


# -- locating keys --------------------------------------------------------------------------


def test_line_of_follows_arrays_of_tables_and_subtables() -> None:
    text = "\n".join(
        [
            "[[serial]]",  # 1
            'port = "/dev/ttyUSB0"',  # 2
            "[[serial]]",  # 3
            'doc = """',  # 4
            "port = not a key",  # 5
            '"""',  # 6
            'port = "/dev/ttyUSB1"',  # 7
            "[serial.framing]",  # 8
            "baud = 9600",  # 9
            '"quoted key" = 1',  # 10
        ]
    )
    assert _line_of(text, ("serial", 0, "port")) == 2
    assert _line_of(text, ("serial", 1, "port")) == 7
    assert _line_of(text, ("serial", 1, "framing", "baud")) == 9
    assert _line_of(text, ("serial", 1, "framing", "missing")) == 8
    assert _line_of(text, ("serial", 1, "framing", "quoted key")) == 10
    assert _line_of(text, ("other",)) is None


# -- a cluster that cannot work -------------------------------------------------------------

_CLUSTER_ON_SQLITE = '[hub]\nbackplane = "redis://:s3cret-pass@127.0.0.1:6379/0"\n'


def test_a_redis_backplane_needs_a_shared_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_settings_file(write(tmp_path, _CLUSTER_ON_SQLITE))
    text = str(caught.value)
    assert 'hub.backplane is a Redis URL (several hub nodes) but hub.database is "sqlite"' in text
    assert "set hub.database to the postgresql:// URL every node uses" in text
    assert "s3cret-pass" not in text
    # Whichever layer sets the backplane, the refusal is the same.
    monkeypatch.setenv("EDGE_AGENT_HUB__BACKPLANE", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r'hub\.database is "sqlite"'):
        load_settings(None)
    # A shared database, or one process in memory, is fine.
    cluster = load_settings(write(tmp_path, '[hub]\ndatabase = "postgresql://hub@db/edge"\n'))
    assert cluster.hub.backplane.startswith("redis://")
    monkeypatch.delenv("EDGE_AGENT_HUB__BACKPLANE")
    assert load_settings(None).hub.database == "sqlite"


@pytest.mark.parametrize("command", [["config", "check", "{path}"], ["hub", "--config", "{path}"]])
def test_config_check_and_hub_both_refuse_a_cluster_on_sqlite(
    tmp_path: Path, command: list[str]
) -> None:
    path = write(tmp_path, _CLUSTER_ON_SQLITE, name="hub.toml")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_AGENT_")}
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", *(part.format(path=path) for part in command)],
        capture_output=True,
        text=True,
        env={**env, "XDG_STATE_HOME": str(tmp_path / "xdg")},
        cwd=CONFIG_DIR.parent,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"edge-agent: {path}:1, key 'hub': hub.backplane is a Redis")
    assert "hub.database" in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret-pass" not in done.stderr
    assert not (tmp_path / "xdg").exists()  # refused before anything was made
