use super::*;
use std::collections::HashMap;

fn load(vars: &[(&str, &str)]) -> Result<ValidatedConfig, Vec<ConfigError>> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |k: &str| map.get(k).cloned();
    Config::load(&Sources {
        env: &env,
        file: None,
    })
}

#[test]
fn seed_backends_split_from_the_right() {
    let b =
        parse_backends("meta-llama/Llama-3:8b:10.0.0.1:8000, m2=https://h:9000/").expect("valid");
    assert_eq!(
        b[0],
        StaticBackend {
            model: "meta-llama/Llama-3:8b".into(),
            url: "http://10.0.0.1:8000".into()
        }
    );
    assert_eq!(
        b[1],
        StaticBackend {
            model: "m2".into(),
            url: "https://h:9000".into()
        }
    );
    assert!(parse_backends("nohostport").is_err());
    assert!(parse_backends("m:h:99999").is_err());
    assert!(parse_backends(":h:80").is_err());
}

#[test]
fn defaults_and_overrides() {
    let c = load(&[
        ("PORT", "9090"),
        ("BACKENDS", "m:127.0.0.1:8000"),
        ("API_KEYS", "a, b"),
    ])
    .expect("valid");
    assert_eq!(c.port, 9090);
    assert_eq!(c.api_keys.len(), 2);
    assert_eq!(c.health_check_interval, Duration::from_millis(30_000));
    assert_eq!(c.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(c.max_attempts, 2);
    assert!(c.route_via_registry, "routing asks the registry by default");
    assert!(c.has_backends());
}

#[test]
fn all_problems_reported_at_once_naming_the_variable() {
    let errs = load(&[
        ("PORT", "eighty"),
        ("MAX_ATTEMPTS", "0"),
        ("ENABLE_CORS", "maybe"),
        ("VLLM_SERVERS", "ftp://x:1"),
    ])
    .expect_err("invalid");
    let names: Vec<&str> = errs.iter().map(|e| e.name.as_str()).collect();
    for n in ["PORT", "MAX_ATTEMPTS", "ENABLE_CORS", "VLLM_SERVERS"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
}

#[test]
fn audit_sync_interval_defaults_to_100_ms_and_takes_0_to_1000() {
    let base = [("BACKENDS", "m:127.0.0.1:8000"), ("API_KEYS", "a")];
    let c = load(&base).expect("valid");
    assert_eq!(c.audit_sync_interval, Duration::from_millis(100));
    for (v, ok) in [("0", true), ("1000", true), ("1001", false), ("-1", false)] {
        let r = load(&[base[0], base[1], ("AUDIT_SYNC_INTERVAL", v)]);
        match r {
            Ok(c) => {
                assert!(ok, "{v} accepted");
                assert_eq!(c.audit_sync_interval.as_millis().to_string(), v);
            }
            Err(errs) => {
                assert!(!ok, "{v} refused: {errs:?}");
                assert_eq!(errs[0].name, "AUDIT_SYNC_INTERVAL");
            }
        }
    }
}

#[test]
fn worker_threads_default_to_one_per_cpu_and_are_bounded() {
    let base = [("BACKENDS", "m:127.0.0.1:8000"), ("API_KEYS", "a")];
    assert_eq!(load(&base).expect("valid").worker_threads, 0);
    let one = load(&[base[0], base[1], ("WORKER_THREADS", "1")]).expect("valid");
    assert_eq!(one.worker_threads, 1);
    assert!(one.render_masked().contains("WORKER_THREADS=1"));
    for bad in ["1025", "two", "-1"] {
        let errs = load(&[base[0], base[1], ("WORKER_THREADS", bad)]).expect_err(bad);
        assert_eq!(errs[0].name, "WORKER_THREADS", "{bad}");
    }
}

#[test]
fn cors_rules() {
    assert_eq!(
        load(&[("ENABLE_CORS", "true"), ("CORS_ORIGIN", "*")])
            .expect("valid")
            .cors_origins,
        CorsOrigins::Any
    );
    let c = load(&[
        ("ENABLE_CORS", "true"),
        ("CORS_ORIGIN", "https://a.example, http://b.example:3000"),
    ])
    .expect("valid");
    assert_eq!(
        c.cors_origins,
        CorsOrigins::List(vec![
            "https://a.example".into(),
            "http://b.example:3000".into()
        ])
    );
    assert!(load(&[("CORS_ORIGIN", "null")]).is_err());
    assert!(load(&[("CORS_ORIGIN", "*,https://a.example")]).is_err());
    assert!(load(&[("ENABLE_CORS", "true")]).is_err());
}

#[test]
fn secrets_from_files_and_masked_output() {
    let dir = std::env::temp_dir().join(format!("llmmux-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join("keys");
    std::fs::write(&f, "sk-from-file\n").expect("write");
    let c = load(&[
        ("API_KEYS_FILE", f.to_str().expect("utf8")),
        ("VLLM_API_KEY", "vk-secret"),
    ])
    .expect("valid");
    assert_eq!(c.api_keys[0].expose(), "sk-from-file");
    let shown = c.render_masked();
    assert!(!shown.contains("sk-from-file") && !shown.contains("vk-secret"));
    assert!(shown.contains("API_KEYS=****"));
    assert!(format!("{c:?}").contains("Secret(****)") && !format!("{c:?}").contains("vk-secret"));
    let errs = load(&[("API_KEYS_FILE", "/nonexistent/llmmux")]).expect_err("missing file");
    assert_eq!(errs[0].name, "API_KEYS_FILE");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn yaml_file_with_env_winning() {
    let dir = std::env::temp_dir().join(format!("llmmux-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join("c.yaml");
    std::fs::write(
        &f,
        "port: 7000\nmax_attempts: 3\nmodel_aliases:\n  gpt-4: qwen3\nservers:\n  - url: 127.0.0.1:8001\n    models: [qwen3]\n    max_in_flight: 4\n",
    )
    .expect("write");
    let env = |k: &str| (k == "PORT").then(|| "7001".to_string());
    let c = Config::load(&Sources {
        env: &env,
        file: Some(f.clone()),
    })
    .expect("valid");
    assert_eq!(c.port, 7001);
    assert_eq!(c.max_attempts, 3);
    assert_eq!(
        c.model_aliases.get("gpt-4").map(String::as_str),
        Some("qwen3")
    );
    assert_eq!(c.server_options[0].max_in_flight, Some(4));
    std::fs::write(&f, "bogus_key: 1\n").expect("write");
    let none = |_: &str| None;
    let errs = Config::load(&Sources {
        env: &none,
        file: Some(f),
    })
    .expect_err("unknown key");
    assert!(errs[0].reason.contains("bogus_key"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Every setting `check-config` prints has a row in the README's table, and every YAML key
/// names one of them.
#[test]
fn every_setting_is_documented_in_the_readme() {
    let readme = include_str!("../../README.md");
    let cfg = load(&[("BACKENDS", "m:127.0.0.1:8000")]).expect("valid");
    let names: Vec<String> = cfg
        .render_masked()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .filter(|k| {
            k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(names.len() > 50, "{} settings", names.len());
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !readme.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "settings without a README row: {missing:?}"
    );
    let unknown: Vec<&&str> = super::yaml::KNOWN
        .iter()
        .filter(|k| !names.contains(&k.to_ascii_uppercase()))
        .collect();
    assert!(
        unknown.is_empty(),
        "YAML keys that are no setting: {unknown:?}"
    );
}
