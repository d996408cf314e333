//! `docs/settings.md` is generated from the settings' declarations (each variable declared
//! once, beside the field it fills), and every `BOROUGH_*` name the repository mentions —
//! the Makefile, compose, Kubernetes and Helm files, the docs, the scripts, the tools and
//! the tests — is one of them.
//!
//! `UPDATE_DOCS=1 cargo test -p borough-tools --test settings` rewrites the page.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use borough_config_client::Var;

const SERVICES: [&str; 4] = ["gateway", "user", "query", "config"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every service's variables, each with the services that read it.
fn service_vars() -> BTreeMap<&'static str, (&'static Var, Vec<&'static str>)> {
    let lists = [
        borough_gateway::Settings::vars(),
        borough_user::Settings::vars(),
        borough_query::Settings::vars(),
        borough_config::Settings::vars(),
    ];
    let mut vars: BTreeMap<&'static str, (&'static Var, Vec<&'static str>)> = BTreeMap::new();
    for (service, list) in SERVICES.into_iter().zip(lists) {
        for var in list {
            let entry = vars.entry(var.name).or_insert((var, Vec::new()));
            assert_eq!(entry.0, var, "{} is declared twice, differently", var.name);
            if !entry.1.contains(&service) {
                entry.1.push(service);
            }
        }
    }
    vars
}

/// The tools' and the test kit's own variables.
fn tool_vars() -> Vec<&'static Var> {
    borough_tools::VARS
        .iter()
        .copied()
        .chain(std::iter::once(&borough_testkit::pg::PG_BIN))
        .collect()
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn code(text: &str) -> String {
    match text {
        "" => "—".to_owned(),
        text if text.contains(' ') => cell(text),
        text => format!("`{}`", text.replace('|', "\\|")),
    }
}

fn render() -> String {
    let mut page = String::from(
        "# Settings\n\n\
         Every setting of every service, generated from the code: each variable is declared \
         once, beside the field it fills (`borough_config_client::Var`), and this page is \
         made from those declarations. `cargo test -p borough-tools --test settings` fails \
         when it is stale; `UPDATE_DOCS=1 cargo test -p borough-tools --test settings` \
         rewrites it.\n\n\
         Values are read once at start. A setting with a **hot key** also follows that key \
         of the config service's `platform/<service>` namespace while the service runs \
         (docs/config.md): its value is the text the variable would hold, read by the same \
         parser (`\"250ms\"`, `\"1MiB\"`; a bare number of a duration is seconds), and a \
         value the parser refuses is logged and the previous one kept. Durations take `ms`, \
         `s`, `m`, `h`; sizes take `KiB`, `MiB`, `GiB`. A value outside its range stops \
         the service at start with a message naming the variable. A secret (a password, \
         a token, a key, a database URL) may instead be given as a file: `<name>_FILE` \
         holding its path (a mounted Docker or Kubernetes secret).\n\n\
         ## Services\n\n\
         | Variable | Default | Hot key | Read by | Meaning |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for (name, (var, services)) in service_vars() {
        let read_by = match services.len() {
            4 => "all".to_owned(),
            _ => services.join(", "),
        };
        let name = match var.secret {
            true => format!("`{name}` or `{name}_FILE`"),
            false => format!("`{name}`"),
        };
        page.push_str(&format!(
            "| {name} | {} | {} | {read_by} | {} |\n",
            code(var.default),
            var.hot.map_or("—".to_owned(), |k| format!("`{k}`")),
            cell(var.meaning),
        ));
    }
    page.push_str(
        "\n## Development and test tools\n\n\
         | Variable | Default | Meaning |\n\
         | --- | --- | --- |\n",
    );
    let mut tools = tool_vars();
    tools.sort_by_key(|v| v.name);
    for var in tools {
        page.push_str(&format!(
            "| `{}` | {} | {} |\n",
            var.name,
            code(var.default),
            cell(var.meaning)
        ));
    }
    page
}

#[test]
fn docs_settings_md_is_generated_from_the_declarations() -> anyhow::Result<()> {
    let path = root().join("docs/settings.md");
    let page = render();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &page)?;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == page,
        "docs/settings.md is stale: run `UPDATE_DOCS=1 cargo test -p borough-tools --test settings`"
    );
    Ok(())
}

#[test]
fn every_variable_has_a_meaning_and_hot_keys_are_distinct_per_setting() {
    let vars = service_vars();
    for (name, (var, _)) in &vars {
        assert!(!var.meaning.is_empty(), "{name} says nothing of itself");
        assert!(
            name.starts_with("BOROUGH_") || name.starts_with("OTEL_") || *name == "RUST_LOG",
            "{name}"
        );
    }
    // One key, one setting — except the rate limit's object, which sets both halves.
    let mut keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, (var, _)) in &vars {
        if let Some(key) = var.hot {
            keys.entry(key).or_default().push(name);
        }
    }
    for (key, names) in keys {
        assert!(
            names.len() == 1 || key == "rate_limit.default",
            "{key} is the hot key of {names:?}"
        );
    }
}

/// Files the repository's users and tools set variables in.
fn mentions() -> anyhow::Result<Vec<PathBuf>> {
    let root = root();
    let mut files = vec![
        root.join("Makefile"),
        root.join("README.md"),
        root.join("docker-compose.yml"),
        root.join("Dockerfile"),
        root.join(".ci/run"),
    ];
    let mut dirs = vec![
        root.join("docs"),
        root.join("k8s"),
        root.join("deploy"),
        root.join("scripts"),
        root.join("tools"),
        root.join("crates/testkit"),
    ];
    for group in ["crates", "services"] {
        for entry in std::fs::read_dir(root.join(group))? {
            dirs.push(entry?.path().join("tests"));
        }
    }
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n != "settings.md") {
                files.push(path);
            }
        }
    }
    Ok(files)
}

#[test]
fn every_borough_variable_the_repository_names_is_declared() -> anyhow::Result<()> {
    let secret_files: Vec<String> = service_vars()
        .values()
        .filter(|(var, _)| var.secret)
        .map(|(var, _)| format!("{}_FILE", var.name))
        .collect();
    let declared: BTreeSet<&str> = service_vars()
        .keys()
        .copied()
        .chain(tool_vars().into_iter().map(|v| v.name))
        .chain(secret_files.iter().map(String::as_str))
        .collect();
    let mut unknown = BTreeMap::new();
    for file in mentions()? {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (at, _) in text.match_indices("BOROUGH_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // `BOROUGH_TLS_*` and the like name a family, not a variable.
            let family = name.ends_with('_') || text[at + name.len()..].starts_with('*');
            if !family && !declared.contains(name.as_str()) {
                unknown.entry(name).or_insert_with(|| {
                    file.strip_prefix(root())
                        .unwrap_or(&file)
                        .display()
                        .to_string()
                });
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "named but declared nowhere (variable: first file): {unknown:#?}"
    );
    Ok(())
}

#[test]
fn every_declared_default_parses_and_is_the_value_the_code_starts_from() -> anyhow::Result<()> {
    use borough_config_client::Env;
    let unset = Env::from_pairs([("", "")]);
    borough_gateway::Settings::from_env(&unset)?;
    borough_user::Settings::from_env(&unset)?;
    borough_query::Settings::from_env(&unset)?;
    borough_config::Settings::from_env(&unset)?;
    assert_eq!(
        borough_gateway::server::ConnectionLimits::from_env(&unset)?,
        borough_gateway::server::ConnectionLimits::default()
    );
    assert_eq!(
        borough_gateway::auth_guard::AuthLimits::from_env(&unset)?,
        borough_gateway::auth_guard::AuthLimits::default()
    );
    assert_eq!(
        borough_gateway::watches::WatchLimits::from_env(&unset)?,
        borough_gateway::watches::WatchLimits::default()
    );
    assert_eq!(
        borough_config::store::Quotas::from_env(&unset)?,
        borough_config::store::Quotas::default()
    );
    assert_eq!(
        borough_config::watch::WatchLimits::from_env(&unset)?,
        borough_config::watch::WatchLimits::default()
    );
    assert_eq!(
        borough_config_client::ShedLimits::from_env(&unset)?,
        borough_config_client::ShedLimits::default()
    );
    Ok(())
}
