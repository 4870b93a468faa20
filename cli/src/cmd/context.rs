//! `clustermesh context add|use|list|remove`: the contexts file.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::{self, Config, Context};
use crate::output::{Format, table};

/// `context add NAME --server ADDR --tls-dir DIR`. The TLS directory is
/// stored as an absolute path; the first context added becomes current.
pub fn add(path: &Path, name: &str, server: &str, tls_dir: &Path) -> anyhow::Result<String> {
    let mut cfg = Config::load(path)?;
    let tls_dir = config::absolute_tls_dir(tls_dir)?;
    if !tls_dir.join(clustermesh_certs::CA_CERT_FILE).is_file() {
        anyhow::bail!(
            "{} has no {}: pass the directory made by `clustermesh certs init`",
            tls_dir.display(),
            clustermesh_certs::CA_CERT_FILE
        );
    }
    let replaced = cfg.upsert(Context {
        name: name.to_owned(),
        server: server.to_owned(),
        tls_dir: tls_dir.clone(),
    })?;
    let mut msg = format!(
        "{} context {name}: {server} with {}",
        if replaced { "Updated" } else { "Added" },
        tls_dir.display()
    );
    if cfg.current_context.is_none() {
        cfg.current_context = Some(name.to_owned());
        msg.push_str(" (now the current context)");
    }
    cfg.save(path)?;
    Ok(msg)
}

/// `context use NAME`.
pub fn use_(path: &Path, name: &str) -> anyhow::Result<String> {
    let mut cfg = Config::load(path)?;
    cfg.require(name, path)?;
    cfg.current_context = Some(name.to_owned());
    cfg.save(path)?;
    Ok(format!("Current context: {name}"))
}

/// `context remove NAME`.
pub fn remove(path: &Path, name: &str) -> anyhow::Result<String> {
    let mut cfg = Config::load(path)?;
    cfg.require(name, path)?;
    cfg.contexts.retain(|c| c.name != name);
    if cfg.current_context.as_deref() == Some(name) {
        cfg.current_context = None;
    }
    cfg.save(path)?;
    Ok(format!("Removed context {name}"))
}

/// The stable JSON shape of `context list -o json`.
pub fn to_json(cfg: &Config, path: &Path) -> Value {
    json!({
        "file": path.display().to_string(),
        "current_context": cfg.current_context,
        "contexts": cfg.contexts.iter().map(|c| json!({
            "name": c.name,
            "server": c.server,
            "tls_dir": c.tls_dir.display().to_string(),
            "current": cfg.current_context.as_deref() == Some(c.name.as_str()),
        })).collect::<Vec<_>>(),
    })
}

pub fn to_text(cfg: &Config, path: &Path) -> String {
    if cfg.contexts.is_empty() {
        return format!(
            "No contexts in {} yet: add one with `clustermesh context add NAME --server ADDR --tls-dir DIR`.\n",
            path.display()
        );
    }
    let rows: Vec<Vec<String>> = cfg
        .contexts
        .iter()
        .map(|c| {
            vec![
                if cfg.current_context.as_deref() == Some(c.name.as_str()) {
                    "*".into()
                } else {
                    String::new()
                },
                c.name.clone(),
                c.server.clone(),
                c.tls_dir.display().to_string(),
            ]
        })
        .collect();
    table(&["CURRENT", "NAME", "SERVER", "TLS DIR"], &rows)
}

pub fn list(path: &Path, format: Format) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&to_json(&cfg, path))?),
        Format::Table => to_text(&cfg, path),
    })
}

/// The contexts file path, for the commands that edit it.
pub fn path() -> anyhow::Result<PathBuf> {
    Ok(config::default_path()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_use_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        let file = dir.path().join("config.yaml");
        let e = add(&file, "c1", "a:1", &tls).unwrap_err().to_string();
        assert!(e.contains("certs init"), "{e}");
        std::fs::write(tls.join("ca.crt"), "x").unwrap();
        assert!(
            add(&file, "c1", "a:1", &tls)
                .unwrap()
                .contains("now the current")
        );
        assert!(add(&file, "c2", "b:1", &tls).unwrap().starts_with("Added"));
        let v = to_json(&Config::load(&file).unwrap(), &file);
        assert_eq!(v["current_context"], "c1");
        assert_eq!(v["contexts"][1]["name"], "c2");
        assert_eq!(v["contexts"][0]["current"], true);
        use_(&file, "c2").unwrap();
        assert!(use_(&file, "c3").is_err());
        let text = list(&file, Format::Table).unwrap();
        let line = text.lines().find(|l| l.contains("c2")).unwrap();
        assert!(line.starts_with('*'), "{text}");
        remove(&file, "c2").unwrap();
        assert_eq!(Config::load(&file).unwrap().current_context, None);
    }
}
