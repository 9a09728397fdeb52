//! Property tests of configuration loading: random assignments of every key, set through the
//! TOML file, the environment or flags, load to the same configuration or fail naming the same
//! key, and never panic; `--initial-cluster` and URLs written back parse to what they came from.
//!
//! 128 cases per property (each writes one small TOML file): about two seconds in release.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::collection::vec;
use proptest::prelude::*;

use super::keys::{KEYS, Kind, env_name};
use super::parse::parse_url;
use super::*;

/// A value of the right kind (likely to parse) or of the wrong kind, for `kind`.
fn value(kind: Kind) -> BoxedStrategy<String> {
    let likely: BoxedStrategy<String> = match kind {
        Kind::Bool => prop_oneof![
            Just("true"),
            Just("false"),
            Just("1"),
            Just("0"),
            Just("t"),
            Just("F"),
            Just("TRUE"),
        ]
        .prop_map(str::to_owned)
        .boxed(),
        Kind::Integer => prop_oneof![
            (0..10_000u64).prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_owned()),
        ]
        .boxed(),
        Kind::Duration => prop_oneof![
            (0..100_000u64).prop_map(|n| format!("{n}ms")),
            (0..1_000u64).prop_map(|n| format!("{n}s")),
            Just("1h2m3.5s".to_owned()),
            Just("-1s".to_owned()),
            Just("0".to_owned()),
            (0..100_000u64).prop_map(|n| n.to_string()),
        ]
        .boxed(),
        Kind::Urls => vec(
            prop_oneof![
                Just("http://127.0.0.1:2379".to_owned()),
                Just("https://localhost:2380".to_owned()),
                Just("http://[::1]:1".to_owned()),
                Just("unix://sock:1".to_owned()),
                "(http|https|unix|ftp)://[a-z0-9.]{0,8}(:[0-9]{0,6})?(/[a-z]{0,3})?",
            ],
            1..3,
        )
        .prop_map(|urls| urls.join(","))
        .boxed(),
        Kind::List => "[a-z0-9=:/.,]{0,30}".boxed(),
        Kind::Text => "[a-zA-Z0-9=:/.,_-]{0,20}".boxed(),
    };
    prop_oneof![3 => likely, 1 => "[ -~]{0,16}"].boxed()
}

/// A few distinct keys with values (never `config-file`, which names the file itself).
fn assignments() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    vec(0..KEYS.len(), 0..5)
        .prop_map(|mut picks| {
            picks.sort_unstable();
            picks.dedup();
            picks
        })
        .prop_flat_map(|picks| {
            picks
                .into_iter()
                .map(|i| {
                    let key = &KEYS[i];
                    value(key.kind).prop_map(move |v| (key.name, v))
                })
                .collect::<Vec<_>>()
        })
}

/// A TOML file that removes itself.
struct TomlFile(std::path::PathBuf);

impl TomlFile {
    fn new(text: &str) -> TomlFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "oxetcd-config-props-{}-{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TomlFile(path)
    }
}

impl Drop for TomlFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type Loaded = Result<Config, ConfigError>;

fn via_flags(set: &[(&str, String)]) -> Loaded {
    let args = std::iter::once("oxetcd".to_owned())
        .chain(set.iter().map(|(key, value)| format!("--{key}={value}")));
    Config::load(args, Vec::new()).map(|(config, _)| config)
}

fn via_env(set: &[(&str, String)]) -> Loaded {
    let env = set
        .iter()
        .map(|(key, value)| (env_name(key), value.clone()));
    Config::load(["oxetcd"], env.collect::<Vec<_>>()).map(|(config, _)| config)
}

fn via_file(set: &[(&str, String)]) -> Loaded {
    let text: String = set
        .iter()
        .map(|(key, value)| format!("{key} = {}\n", serde_json::Value::from(value.as_str())))
        .collect();
    let file = TomlFile::new(&text);
    let path = file.0.to_str().unwrap().to_owned();
    Config::load(["oxetcd", "--config-file", &path], Vec::new()).map(|(mut config, _)| {
        config.config_file = None;
        config
    })
}

/// An error about a key names it, in its text too; which keys may be named for what was set.
fn names_a_key(err: &ConfigError, set: &[(&str, String)]) -> Result<(), TestCaseError> {
    let text = err.to_string();
    match err {
        // clap's message names the flag; a file that is not TOML has no key to name.
        ConfigError::Usage(_) => {
            prop_assert!(set.iter().any(|(key, _)| text.contains(key)), "{}", text);
        }
        ConfigError::File { .. } | ConfigError::Layering(_) => {}
        _ => {
            let key = err.key();
            prop_assert!(key.is_some(), "{} names no key", text);
            prop_assert!(
                text.contains(key.unwrap()),
                "{} does not name {:?}",
                text,
                key
            );
        }
    }
    Ok(())
}

/// The same outcome through two layers: equal configurations, or errors about the same key.
fn same(a: &Loaded, b: &Loaded, what: &str) -> Result<(), TestCaseError> {
    match (a, b) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", what),
        (Err(a), Err(b)) => prop_assert_eq!(a.key(), b.key(), "{}: {} / {}", what, a, b),
        (a, b) => prop_assert!(
            false,
            "{}: {:?} / {:?}",
            what,
            a.as_ref().err(),
            b.as_ref().err()
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_layer_reads_the_same_settings(set in assignments()) {
        let flags = via_flags(&set);
        let env = via_env(&set);
        let file = via_file(&set);
        for loaded in [&flags, &env, &file] {
            if let Err(err) = loaded {
                names_a_key(err, &set)?;
            }
        }
        // clap refuses some values itself (an empty value for a flag, say): compare the
        // environment and the file always, flags when clap took them.
        same(&env, &file, "environment vs file")?;
        if !matches!(flags, Err(ConfigError::Usage(_))) {
            same(&flags, &env, "flags vs environment")?;
        }
    }

    /// Random TOML documents: an error or a configuration, never a panic.
    #[test]
    fn random_toml_documents_never_panic(text in "[a-z_\\-=\\[\\]\"0-9., \n]{0,120}") {
        let file = TomlFile::new(&text);
        let path = file.0.to_str().unwrap().to_owned();
        if let Err(err) = Config::load(["oxetcd", "--config-file", &path], Vec::new()) {
            let _ = err.key();
            let _ = err.to_string();
        }
    }

    /// `--initial-cluster` written back by the configuration reads back the same.
    #[test]
    fn initial_cluster_renders_and_parses_back(
        members in vec(("[a-z][a-z0-9]{0,6}", 1..65535u16), 1..4),
    ) {
        let cluster: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, (name, port))| format!("{name}{i}=http://127.0.0.1:{port}"))
            .collect();
        let first_name = cluster[0].split('=').next().unwrap().to_owned();
        let first_url = cluster[0].split('=').nth(1).unwrap().to_owned();
        let args = [
            "oxetcd".to_owned(),
            format!("--name={first_name}"),
            format!("--initial-advertise-peer-urls={first_url}"),
            format!("--initial-cluster={}", cluster.join(",")),
        ];
        let (config, _) = Config::load(args.clone(), Vec::new()).unwrap();
        let rendered = config.initial_cluster_string();
        let mut again = args.to_vec();
        again[3] = format!("--initial-cluster={rendered}");
        let (reloaded, _) = Config::load(again, Vec::new()).unwrap();
        prop_assert_eq!(reloaded, config);
    }

    /// A URL the configuration accepted, written back as etcd writes it (`scheme://host:port`,
    /// the path dropped), parses back to the same scheme, host and port and renders the same.
    #[test]
    fn urls_render_and_parse_back(text in "(http|https|unix|unixs)://[a-z0-9.]{1,8}(:[0-9]{1,5})?(/[a-z]{0,3})?") {
        if let Ok(url) = parse_url(&text) {
            let rendered = etcd_url_string(&url);
            let again = parse_url(&rendered).unwrap();
            prop_assert_eq!(again.scheme(), url.scheme());
            prop_assert_eq!(again.host_str(), url.host_str());
            prop_assert_eq!(again.port_or_known_default(), url.port_or_known_default());
            prop_assert_eq!(etcd_url_string(&again), rendered);
        }
    }
}
