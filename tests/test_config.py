from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.config import DEV_SECRET_FILE, LOCALHOST_ORIGINS, ConfigError, Settings, parse_database_url

SECRET = "config-test-secret-0123456789-0123456789"


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    """An environment whose database lives under tmp_path, so no file lands in the checkout."""
    return {"DATABASE_URL": f"sqlite:///{tmp_path}/data/keys.db", "SUPABASE_JWT_SECRET": SECRET, **values}


def test_defaults():
    settings = Settings.from_env({"SUPABASE_JWT_SECRET": SECRET, "APP_ENV": "development"})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.env == "development" and not settings.production
    assert settings.validate_responses is True
    assert settings.database_path == Path("data/keys.db")
    assert settings.cors_origin_regex == LOCALHOST_ORIGINS
    assert settings.jwt_secret == SECRET and not settings.jwt_secret_generated
    assert (settings.management_limit_per_minute, settings.management_limit_per_day) == (120, 10_000)
    assert settings.max_active_keys == 50
    assert settings.log_level == "INFO"
    assert settings.forwarded_allow_ips == ()  # no proxy is believed unless named
    assert settings.request_read_timeout == 10


def test_values_are_read_from_environment(tmp_path):
    settings = Settings.from_env(env(
        tmp_path, HOST="0.0.0.0", PORT="9000", KEY_MANAGEMENT_LIMIT_PER_MINUTE="5",
        KEY_MANAGEMENT_LIMIT_PER_DAY="50", MAX_ACTIVE_KEYS="3", LOG_LEVEL="debug", VALIDATE_RESPONSES="no",
    ))
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert (settings.management_limit_per_minute, settings.management_limit_per_day) == (5, 50)
    assert settings.max_active_keys == 3
    assert settings.log_level == "DEBUG"
    assert settings.validate_responses is False


def test_production_without_secret_raises(tmp_path):
    environ = env(tmp_path, APP_ENV="production")
    del environ["SUPABASE_JWT_SECRET"]
    with pytest.raises(ConfigError, match="SUPABASE_JWT_SECRET"):
        Settings.from_env(environ)
    assert not (tmp_path / "data" / DEV_SECRET_FILE).exists()


def test_production_with_empty_secret_raises(tmp_path):
    with pytest.raises(ConfigError, match="SUPABASE_JWT_SECRET"):
        Settings.from_env(env(tmp_path, APP_ENV="production", SUPABASE_JWT_SECRET=""))


def test_production_turns_off_response_validation_and_cors_by_default(tmp_path):
    settings = Settings.from_env(env(tmp_path, APP_ENV="production"))
    assert settings.production
    assert settings.validate_responses is False
    assert settings.cors_origin_regex == ""


def test_production_can_opt_back_in_to_validation_and_cors(tmp_path):
    settings = Settings.from_env(env(
        tmp_path, APP_ENV="production", VALIDATE_RESPONSES="true", CORS_ORIGIN_REGEX=r"^https://app\.example$"
    ))
    assert settings.validate_responses is True
    assert settings.cors_origin_regex == r"^https://app\.example$"


def test_app_env_is_case_and_space_insensitive(tmp_path):
    assert Settings.from_env(env(tmp_path, APP_ENV=" Production ")).production


def test_unknown_app_env_raises(tmp_path):
    with pytest.raises(ConfigError, match="APP_ENV"):
        Settings.from_env(env(tmp_path, APP_ENV="staging"))


def test_unset_or_empty_app_env_is_production(tmp_path):
    for environ in (env(tmp_path), env(tmp_path, APP_ENV=""), env(tmp_path, APP_ENV=" ")):
        settings = Settings.from_env(environ)
        assert settings.production and not settings.jwt_secret_generated
        assert settings.cors_origin_regex == "" and settings.mock_delay_ms == 0 and not settings.key_page
    del environ["SUPABASE_JWT_SECRET"]
    with pytest.raises(ConfigError, match="SUPABASE_JWT_SECRET is required in production"):
        Settings.from_env(environ)
    assert not (tmp_path / "data" / DEV_SECRET_FILE).exists()


@pytest.mark.parametrize("secret", ["abc", "s" * 31, "é" * 15])
def test_production_refuses_a_secret_shorter_than_32_bytes_without_repeating_it(tmp_path, secret):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env(tmp_path, APP_ENV="production", SUPABASE_JWT_SECRET=secret))
    assert str(caught.value).startswith("SUPABASE_JWT_SECRET must be at least 32 bytes in production")
    assert secret not in str(caught.value)
    assert Settings.from_env(env(tmp_path, APP_ENV="production", SUPABASE_JWT_SECRET="é" * 16)).production


def test_development_accepts_a_short_secret(tmp_path):
    assert Settings.from_env(env(tmp_path, APP_ENV="development", SUPABASE_JWT_SECRET="abc")).jwt_secret == "abc"


def test_settings_without_sessions_need_no_secret_and_make_none(tmp_path):
    for app_env in ("production", "development"):
        environ = env(tmp_path, APP_ENV=app_env)
        del environ["SUPABASE_JWT_SECRET"]
        settings = Settings.from_env(environ, sessions=False)
        assert settings.jwt_secret == "" and not settings.jwt_secret_generated
    assert Settings.from_env(env(tmp_path, SUPABASE_JWT_SECRET="short"), sessions=False).jwt_secret == ""
    assert not (tmp_path / "data" / DEV_SECRET_FILE).exists()


def test_development_without_secret_generates_one_beside_database(tmp_path):
    environ = env(tmp_path, APP_ENV="development")
    del environ["SUPABASE_JWT_SECRET"]
    first = Settings.from_env(environ)
    path = tmp_path / "data" / DEV_SECRET_FILE
    assert first.jwt_secret_generated
    assert len(first.jwt_secret) >= 32
    assert path.read_text().strip() == first.jwt_secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_development_secret_is_kept_across_calls(tmp_path):
    environ = env(tmp_path, APP_ENV="development")
    del environ["SUPABASE_JWT_SECRET"]
    assert Settings.from_env(environ).jwt_secret == Settings.from_env(environ).jwt_secret
    leftovers = [p.name for p in (tmp_path / "data").iterdir() if p.name != DEV_SECRET_FILE]
    assert leftovers == []


def test_development_secrets_differ_per_database_directory(tmp_path):
    a = Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/a/keys.db", "APP_ENV": "development"})
    b = Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/b/keys.db", "APP_ENV": "development"})
    assert a.jwt_secret != b.jwt_secret


def test_explicit_secret_writes_no_file(tmp_path):
    Settings.from_env(env(tmp_path))
    assert not (tmp_path / "data" / DEV_SECRET_FILE).exists()


def test_database_url_relative_path():
    assert parse_database_url("sqlite:///data/keys.db") == Path("data/keys.db")


def test_database_url_absolute_path():
    assert parse_database_url("sqlite:////var/lib/keys/keys.db") == Path("/var/lib/keys/keys.db")


@pytest.mark.parametrize("url", [
    "postgres://localhost/keys",
    "mysql:///keys.db",
    "sqlite://keys.db",
    "sqlite:///",
    "",
    "data/keys.db",
])
def test_database_url_bad_form_raises(url):
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        parse_database_url(url)


def test_database_url_in_memory_is_rejected():
    with pytest.raises(ConfigError, match="in-memory"):
        parse_database_url("sqlite:///:memory:")


def test_from_env_reports_bad_database_url(tmp_path):
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": "sqlite:///:memory:", "SUPABASE_JWT_SECRET": SECRET})


@pytest.mark.parametrize("name", ["PORT", "KEY_MANAGEMENT_LIMIT_PER_MINUTE", "KEY_MANAGEMENT_LIMIT_PER_DAY",
                                  "MAX_ACTIVE_KEYS"])
@pytest.mark.parametrize("value", ["abc", "1.5", "ten", "0x10"])
def test_non_integer_values_raise_config_error_naming_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env(tmp_path, **{name: value}))
    assert name in str(caught.value) and value in str(caught.value)


@pytest.mark.parametrize("name", ["KEY_MANAGEMENT_LIMIT_PER_MINUTE", "KEY_MANAGEMENT_LIMIT_PER_DAY", "MAX_ACTIVE_KEYS"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_limits_below_one_raise_config_error(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env(tmp_path, **{name: value}))


@pytest.mark.parametrize("value", ["-1", "65536"])
def test_out_of_range_port_raises_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match="PORT"):
        Settings.from_env(env(tmp_path, PORT=value))


def test_empty_integer_variable_means_default(tmp_path):
    assert Settings.from_env(env(tmp_path, MAX_ACTIVE_KEYS="", WEB_CONCURRENCY="")).max_active_keys == 50


def test_empty_port_or_host_is_refused_not_taken_for_the_default(tmp_path):
    with pytest.raises(ConfigError, match="PORT must be a port from 1 to 65535, not ''"):
        Settings.from_env(env(tmp_path, PORT=""))
    for host in ("", "  "):
        with pytest.raises(ConfigError, match="HOST must name an address"):
            Settings.from_env(env(tmp_path, HOST=host))


@pytest.mark.parametrize("name", ["PORT", "MAX_ACTIVE_KEYS", "WEB_CONCURRENCY", "MOCK_DELAY_MS"])
@pytest.mark.parametrize("value", ["\xb2", "\u0663", "\u0661\u0662", "1_0", "9" * 5000])
def test_numbers_in_other_digits_or_spelling_are_a_config_error(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env(tmp_path, APP_ENV="development", **{name: value}))


def test_bad_boolean_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="VALIDATE_RESPONSES"):
        Settings.from_env(env(tmp_path, VALIDATE_RESPONSES="maybe"))


def test_forwarded_allow_ips_takes_addresses_and_networks(tmp_path):
    settings = Settings.from_env(env(tmp_path, FORWARDED_ALLOW_IPS=" 10.0.0.5, 192.168.0.0/16,::1 ,", REQUEST_READ_TIMEOUT="3"))
    assert settings.forwarded_allow_ips == ("10.0.0.5", "192.168.0.0/16", "::1")
    assert settings.request_read_timeout == 3
    assert Settings.from_env(env(tmp_path, FORWARDED_ALLOW_IPS="*")).forwarded_allow_ips == ("*",)


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.1/8", "10.0.0.300", "*,10.0.0.1"])
def test_forwarded_allow_ips_refuses_what_is_not_an_address_or_network(tmp_path, value):
    with pytest.raises(ConfigError, match="FORWARDED_ALLOW_IPS"):
        Settings.from_env(env(tmp_path, FORWARDED_ALLOW_IPS=value))


@pytest.mark.parametrize("value", ["0", "ten", "-1"])
def test_request_read_timeout_must_be_a_positive_whole_number(tmp_path, value):
    with pytest.raises(ConfigError, match="REQUEST_READ_TIMEOUT"):
        Settings.from_env(env(tmp_path, REQUEST_READ_TIMEOUT=value))


@pytest.mark.parametrize("raw", ["65", "100000000000000000000000"])
def test_a_worker_count_no_machine_could_fork_is_refused(tmp_path, raw):
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY must be from 1 to 64"):
        Settings.from_env(env(tmp_path, WEB_CONCURRENCY=raw))
    assert Settings.from_env(env(tmp_path, WEB_CONCURRENCY="64")).workers == 64


def test_from_env_takes_each_default_from_its_settings_field(monkeypatch):
    """A default is written once, on the field: changing it there changes what an unset variable gives."""
    import dataclasses
    import ipaddress

    changed: dict[str, object] = {}
    for field in dataclasses.fields(Settings):
        if field.name == "jwt_secret_generated":  # not configured: says how the secret was found
            continue
        if field.name.startswith("leak_report_limit_"):  # no variable sets them: the field is all there is
            continue
        if isinstance(field.default, bool):
            changed[field.name] = not field.default
        elif isinstance(field.default, int):
            changed[field.name] = field.default + 1
        elif field.name in ("log_level", "log_format"):
            changed[field.name] = {"INFO": "DEBUG", "text": "json"}[field.default]
        elif field.name == "metrics_allow":
            changed[field.name] = (ipaddress.ip_network("10.0.0.0/8"),)
        elif field.name in ("host", "cors_origin_regex"):
            changed[field.name] = "192.0.2.1" if field.name == "host" else r"^https://example\.org$"
        elif isinstance(field.default, tuple) and field.default:
            changed[field.name] = (*field.default, "X-Other")
    for name, value in changed.items():
        monkeypatch.setattr(Settings.__dataclass_fields__[name], "default", value)
    settings = Settings.from_env({"APP_ENV": "development", "SUPABASE_JWT_SECRET": SECRET})
    assert {name: getattr(settings, name) for name in changed} == changed


@pytest.mark.parametrize("name", ["PORT", "WEB_CONCURRENCY", "MAX_CONNECTIONS", "MAX_ACTIVE_KEYS", "MOCK_DELAY_MS"])
@pytest.mark.parametrize("value", [" 5", "5 ", "\t5", "5\n", " "])
def test_numbers_with_surrounding_whitespace_are_a_config_error(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name) as caught:
        Settings.from_env(env(tmp_path, APP_ENV="development", **{name: value}))
    assert "\n" not in str(caught.value)
