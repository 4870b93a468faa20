//! The contexts file (like a kubeconfig): named (server, TLS directory)
//! pairs and the current one, and how the global flags are resolved
//! against it.
//!
//! ```yaml
//! current-context: cluster1
//! contexts:
//!   - name: cluster1
//!     server: 127.0.0.1:7443
//!     tls-dir: /home/me/pki/cluster1
//! ```
//!
//! Precedence, per setting: an explicit flag, then `--context NAME`, then
//! the environment (`CLUSTERMESH_SERVER`, `CLUSTERMESH_TLS_DIR`), then the
//! current context, then the defaults (`127.0.0.1:7443`, `.`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cmd::Conn;

/// Environment variable naming the contexts file.
pub const CONFIG_ENV: &str = "CLUSTERMESH_CONFIG";
/// The default server when nothing else says.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7443";
/// The default TLS directory when nothing else says.
pub const DEFAULT_TLS_DIR: &str = ".";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading the contexts file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the contexts file {path} is not valid: {source} (fix or remove it)")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("writing the contexts file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding the contexts file: {0}")]
    Encode(#[from] serde_yaml::Error),
    #[error(
        "no context named {name:?} in {path}{known} (add it with `clustermesh context add {name} --server ADDR --tls-dir DIR`)"
    )]
    UnknownContext {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("context name {0:?} is not valid: use letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error(
        "cannot find the contexts file: set ${CONFIG_ENV} or $HOME (or pass --server and --tls-dir)"
    )]
    NoHome,
    #[error("the TLS directory {path} does not exist: {source}")]
    TlsDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One named apiserver and the TLS directory to talk to it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Context {
    pub name: String,
    pub server: String,
    pub tls_dir: PathBuf,
}

/// The whole contexts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// Where the contexts file lives: `$CLUSTERMESH_CONFIG`, else
/// `$HOME/.config/clustermesh/config.yaml`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    path_from(
        std::env::var_os(CONFIG_ENV).map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn path_from(explicit: Option<PathBuf>, home: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    match (explicit, home) {
        (Some(p), _) if !p.as_os_str().is_empty() => Ok(p),
        (_, Some(h)) if !h.as_os_str().is_empty() => {
            Ok(h.join(".config").join("clustermesh").join("config.yaml"))
        }
        _ => Err(ConfigError::NoHome),
    }
}

impl Config {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the file (creating its directory), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = serde_yaml::to_string(self)?;
        let write_err = |source| ConfigError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    pub fn get(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// The named context, or an error that lists the known ones.
    pub fn require(&self, name: &str, path: &Path) -> Result<&Context, ConfigError> {
        self.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
            ConfigError::UnknownContext {
                name: name.to_owned(),
                path: path.to_owned(),
                known: if names.is_empty() {
                    String::new()
                } else {
                    format!("; known: {}", names.join(", "))
                },
            }
        })
    }

    /// Adds or replaces a context. Returns true when it replaced one.
    pub fn upsert(&mut self, ctx: Context) -> Result<bool, ConfigError> {
        check_name(&ctx.name)?;
        if let Some(c) = self.contexts.iter_mut().find(|c| c.name == ctx.name) {
            *c = ctx;
            return Ok(true);
        }
        self.contexts.push(ctx);
        Ok(false)
    }
}

/// Context names: non-empty, `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadName(name.to_owned()))
    }
}

/// Makes a TLS directory absolute so a context works from any directory.
pub fn absolute_tls_dir(dir: &Path) -> Result<PathBuf, ConfigError> {
    std::fs::canonicalize(dir).map_err(|source| ConfigError::TlsDir {
        path: dir.to_owned(),
        source,
    })
}

/// Everything that can decide where to connect, for [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub flag_server: Option<String>,
    pub flag_tls_dir: Option<PathBuf>,
    pub context: Option<String>,
    pub env_server: Option<String>,
    pub env_tls_dir: Option<PathBuf>,
}

impl Inputs {
    /// Reads `CLUSTERMESH_SERVER` and `CLUSTERMESH_TLS_DIR` (empty = unset).
    pub fn with_env(mut self) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        self.env_server = var("CLUSTERMESH_SERVER");
        self.env_tls_dir = var("CLUSTERMESH_TLS_DIR").map(PathBuf::from);
        self
    }

    /// True when no context is needed: both settings come from flags.
    fn flags_complete(&self) -> bool {
        self.flag_server.is_some() && self.flag_tls_dir.is_some() && self.context.is_none()
    }
}

/// Resolves (server, TLS directory) with the documented precedence.
/// `config` is only consulted when needed, so a broken or missing file
/// does not get in the way of explicit flags.
pub fn resolve(
    inputs: &Inputs,
    config: impl FnOnce() -> Result<(Config, PathBuf), ConfigError>,
) -> Result<Conn, ConfigError> {
    let (named, current) = if inputs.flags_complete() {
        (None, None)
    } else {
        let (cfg, path) = config()?;
        match &inputs.context {
            Some(name) => (Some(cfg.require(name, &path)?.clone()), None),
            None => {
                let current = cfg
                    .current_context
                    .as_deref()
                    .and_then(|n| cfg.get(n))
                    .cloned();
                (None, current)
            }
        }
    };
    let server = inputs
        .flag_server
        .clone()
        .or_else(|| named.as_ref().map(|c| c.server.clone()))
        .or_else(|| inputs.env_server.clone())
        .or_else(|| current.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let tls_dir = inputs
        .flag_tls_dir
        .clone()
        .or_else(|| named.as_ref().map(|c| c.tls_dir.clone()))
        .or_else(|| inputs.env_tls_dir.clone())
        .or_else(|| current.as_ref().map(|c| c.tls_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR));
    Ok(Conn { server, tls_dir })
}

/// The peer side of `connect`/`disconnect`: `--peer-server` and
/// `--peer-tls-dir` (each beats `--peer-context`), or `--peer-context`.
/// None when nothing names the peer; an error when it is only half named.
pub fn resolve_peer(
    server: Option<String>,
    tls_dir: Option<PathBuf>,
    context: Option<String>,
    config: impl FnOnce() -> Result<(Config, PathBuf), ConfigError>,
) -> Result<Option<Conn>, PeerError> {
    let named = match &context {
        Some(name) => {
            let (cfg, path) = config()?;
            Some(cfg.require(name, &path)?.clone())
        }
        None => None,
    };
    let server = server.or_else(|| named.as_ref().map(|c| c.server.clone()));
    let tls_dir = tls_dir.or_else(|| named.as_ref().map(|c| c.tls_dir.clone()));
    match (server, tls_dir) {
        (Some(server), Some(tls_dir)) => Ok(Some(Conn { server, tls_dir })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(PeerError::Half("--peer-tls-dir")),
        (None, Some(_)) => Err(PeerError::Half("--peer-server")),
    }
}

#[derive(Debug, Error)]
pub enum PeerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "the peer is only half named: add {0} (the peer needs both --peer-server and --peer-tls-dir, or --peer-context NAME)"
    )]
    Half(&'static str),
}

/// Loads the default contexts file, for [`resolve`].
pub fn load_default() -> Result<(Config, PathBuf), ConfigError> {
    let path = default_path()?;
    Ok((Config::load(&path)?, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            current_context: Some("c1".into()),
            contexts: vec![
                Context {
                    name: "c1".into(),
                    server: "10.0.0.1:7443".into(),
                    tls_dir: "/pki/c1".into(),
                },
                Context {
                    name: "c2".into(),
                    server: "10.0.0.2:7443".into(),
                    tls_dir: "/pki/c2".into(),
                },
            ],
        }
    }

    fn res(inputs: Inputs, config: Config) -> Result<Conn, ConfigError> {
        resolve(&inputs, || Ok((config, PathBuf::from("/cfg.yaml"))))
    }

    #[test]
    fn defaults_without_anything() {
        let c = res(Inputs::default(), Config::default()).unwrap();
        assert_eq!(c.server, DEFAULT_SERVER);
        assert_eq!(c.tls_dir, PathBuf::from("."));
    }

    #[test]
    fn current_context_applies() {
        let c = res(Inputs::default(), cfg()).unwrap();
        assert_eq!(
            (c.server.as_str(), c.tls_dir.as_path()),
            ("10.0.0.1:7443", Path::new("/pki/c1"))
        );
    }

    #[test]
    fn named_context_beats_current_and_env() {
        let i = Inputs {
            context: Some("c2".into()),
            env_server: Some("env:1".into()),
            ..Default::default()
        };
        let c = res(i, cfg()).unwrap();
        assert_eq!(c.server, "10.0.0.2:7443");
        assert_eq!(c.tls_dir, PathBuf::from("/pki/c2"));
    }

    #[test]
    fn env_beats_current_context() {
        let i = Inputs {
            env_server: Some("env:1".into()),
            ..Default::default()
        };
        let c = res(i, cfg()).unwrap();
        assert_eq!(c.server, "env:1");
        assert_eq!(c.tls_dir, PathBuf::from("/pki/c1"), "per setting");
    }

    #[test]
    fn flags_beat_everything_per_setting() {
        let i = Inputs {
            flag_server: Some("flag:1".into()),
            context: Some("c2".into()),
            ..Default::default()
        };
        let c = res(i, cfg()).unwrap();
        assert_eq!(c.server, "flag:1");
        assert_eq!(c.tls_dir, PathBuf::from("/pki/c2"));
    }

    #[test]
    fn complete_flags_never_read_the_file() {
        let i = Inputs {
            flag_server: Some("a:1".into()),
            flag_tls_dir: Some("/x".into()),
            ..Default::default()
        };
        let c = resolve(&i, || Err(ConfigError::NoHome)).unwrap();
        assert_eq!(c.server, "a:1");
    }

    #[test]
    fn unknown_context_lists_known_ones() {
        let i = Inputs {
            context: Some("nope".into()),
            ..Default::default()
        };
        let e = res(i, cfg()).unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("known: c1, c2"), "{e}");
        assert!(e.contains("clustermesh context add nope"), "{e}");
    }

    #[test]
    fn yaml_round_trip_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.yaml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        cfg().save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("current-context: c1"), "{text}");
        assert!(text.contains("tls-dir: /pki/c1"), "{text}");
        assert_eq!(Config::load(&path).unwrap(), cfg());
    }

    #[test]
    fn broken_file_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "contexts: [ {name: 1").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn upsert_replaces_and_checks_names() {
        let mut c = cfg();
        let replaced = c
            .upsert(Context {
                name: "c1".into(),
                server: "x:1".into(),
                tls_dir: "/y".into(),
            })
            .unwrap();
        assert!(replaced);
        assert_eq!(c.contexts.len(), 2);
        assert!(
            c.upsert(Context {
                name: "bad name".into(),
                server: "x:1".into(),
                tls_dir: "/y".into()
            })
            .is_err()
        );
    }

    #[test]
    fn peer_resolution() {
        let load = || Ok((cfg(), PathBuf::from("/cfg.yaml")));
        assert!(resolve_peer(None, None, None, load).unwrap().is_none());
        let p = resolve_peer(None, None, Some("c2".into()), load)
            .unwrap()
            .unwrap();
        assert_eq!(p.server, "10.0.0.2:7443");
        let p = resolve_peer(Some("o:1".into()), None, Some("c2".into()), load)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.server.as_str(), p.tls_dir.as_path()),
            ("o:1", Path::new("/pki/c2"))
        );
        let e = resolve_peer(Some("o:1".into()), None, None, load)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--peer-tls-dir"), "{e}");
        assert!(resolve_peer(None, None, Some("zz".into()), load).is_err());
    }

    #[test]
    fn path_choice() {
        assert_eq!(
            path_from(Some("/a.yaml".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/a.yaml")
        );
        assert_eq!(
            path_from(None, Some("/home/u".into())).unwrap(),
            PathBuf::from("/home/u/.config/clustermesh/config.yaml")
        );
        assert!(path_from(None, None).is_err());
    }
}
