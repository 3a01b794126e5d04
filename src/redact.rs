//! Secret values from env files, and the one place they are masked out of any text guard shows.

use std::fmt;
use std::path::Path;

/// Env keys whose values are settings, not secrets: they stay readable in output, so
/// `HOST=127.0.0.1` does not turn every address guard prints into `***`. Extend with
/// `[redact] readable` in guard.toml.
pub const READABLE: [&str; 5] = ["PORT", "HOST", "NODE_ENV", "TZ", "LOG_LEVEL"];

/// Values that must never be printed: every non-trivial value of the backed-up env files.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
    readable: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values, redacted)", self.secrets.len())
    }
}

/// Whether a backed-up file is an env file whose values are secrets: `.env`, `.env.*`, `*.env`, `env.*`.
pub fn is_env_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name == ".env"
        || name.starts_with(".env.")
        || name.ends_with(".env")
        || name.starts_with("env.")
}

impl Redactor {
    /// A redactor for the env files among `files` (paths relative to `dir`); unreadable files
    /// are skipped. Values of the `readable` keys are not masked.
    pub fn from_env_files(dir: &Path, files: &[impl AsRef<Path>], readable: &[String]) -> Redactor {
        let mut r = Redactor {
            secrets: Vec::new(),
            readable: readable.to_vec(),
        };
        r.learn_env_files(dir, files);
        r
    }

    /// Learn (again) the values of the env files among `files`: a deploy step may have
    /// written new ones.
    pub fn learn_env_files(&mut self, dir: &Path, files: &[impl AsRef<Path>]) {
        for f in files {
            let f = f.as_ref();
            if is_env_file(f)
                && let Ok(text) = std::fs::read_to_string(dir.join(f))
            {
                self.add_env_text(&text);
            }
        }
    }

    /// Mask this value too (a password in a URL of the config).
    pub fn add_secret(&mut self, value: &str) {
        if value.len() >= 3 && !self.secrets.iter().any(|s| s == value) {
            self.secrets.push(value.to_string());
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Learn the values of an ecosystem's `env` block (the keys that are settings excepted).
    pub fn add_pairs(&mut self, pairs: &[(String, Option<String>)]) {
        for (key, value) in pairs {
            if self.readable.contains(key) {
                continue;
            }
            let Some(value) = value else { continue };
            for v in std::iter::once(value.as_str()).chain(value.lines()) {
                let v = v.trim();
                if is_secret_like(v) && !self.secrets.iter().any(|s| s == v) {
                    self.secrets.push(v.to_string());
                }
            }
        }
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// Learn the values of an env file, read as dotenv reads it: `export`, comments, inline
    /// `# comments` after an unquoted value or a closing quote, and quoted values that span
    /// lines (a PEM key), each line of which is learned too, since it is printed line by line.
    pub fn add_env_text(&mut self, text: &str) {
        for (key, value) in parse_env(text) {
            if self.readable.contains(&key) {
                continue;
            }
            for v in std::iter::once(value.as_str()).chain(value.lines()) {
                let v = v.trim();
                if is_secret_like(v) && !self.secrets.iter().any(|s| s == v) {
                    self.secrets.push(v.to_string());
                }
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every secret value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// Values too short or too common to be secrets are left alone, so `true` does not turn
/// every word in the output into `***`. Numbers of four digits or more are masked (a PIN);
/// the keys that are settings (PORT...) are never learned at all.
fn is_secret_like(value: &str) -> bool {
    if value.len() < 4 {
        return false;
    }
    !matches!(
        value.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "null" | "none" | "production" | "development" | "test"
    )
}

/// `KEY=value` pairs of a dotenv file, as dotenv libraries read them.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().to_string();
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'' | '`')) => {
                let mut body = rest[1..].to_string();
                // A value may go on over several lines until its closing quote.
                loop {
                    if let Some(end) = body.find(q) {
                        body.truncate(end);
                        break;
                    }
                    match lines.next() {
                        Some(next) => {
                            body.push('\n');
                            body.push_str(next);
                        }
                        None => break,
                    }
                }
                body
            }
            _ => match rest.find(" #") {
                Some(i) => rest[..i].trim_end().to_string(),
                None => rest.trim_end().to_string(),
            },
        };
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_but_not_trivial_ones() {
        let mut r = Redactor::default();
        r.add_env_text(
            "# comment\nSENTRY_DSN=\"https://abc123@sentry.example/1\"\nexport DB_PASSWORD='hunter22'\nPORT=3000\nSENTRY_ENABLED=true\nEMPTY=\n",
        );
        let out = r.redact("dsn https://abc123@sentry.example/1 pw hunter22 true");
        assert_eq!(out, "dsn *** pw *** true");
        assert!(!format!("{r:?}").contains("hunter22"));
    }

    #[test]
    fn dotenv_syntax_as_apps_read_it() {
        let text = "A=plainvalue # a comment\nB=\"quoted value\" # note\nPIN=4821\nPEM=\"-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----\"\nexport C='single'\n";
        let pairs = parse_env(text);
        assert_eq!(pairs[0], ("A".into(), "plainvalue".into()));
        assert_eq!(pairs[1], ("B".into(), "quoted value".into()));
        assert_eq!(
            pairs[3].1,
            "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----"
        );
        assert_eq!(pairs[4], ("C".into(), "single".into()));
        let mut r = Redactor::default();
        r.add_env_text(text);
        let out =
            r.redact("plainvalue / quoted value / 4821 / MIIBOgIBAAJBAKj34GkxFhD9 / a comment");
        assert_eq!(out, "*** / *** / *** / *** / a comment");
    }

    #[test]
    fn readable_keys_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("env.env"),
            "HOST=127.0.0.1\nSENTRY_DSN=https://key123@sentry.invalid/1\n",
        )
        .unwrap();
        let readable: Vec<String> = READABLE.iter().map(|k| k.to_string()).collect();
        let r = Redactor::from_env_files(dir.path(), &["env.env"], &readable);
        assert_eq!(
            r.redact("http://127.0.0.1:80 https://key123@sentry.invalid/1"),
            "http://127.0.0.1:80 ***"
        );
    }

    #[test]
    fn recognises_env_file_names() {
        for yes in [
            "env.env",
            ".env",
            ".env.production",
            "prod.env",
            "config/app.env",
        ] {
            assert!(is_env_file(Path::new(yes)), "{yes}");
        }
        for no in ["package.json", "ecosystem.config.js", "environment.ts"] {
            assert!(!is_env_file(Path::new(no)), "{no}");
        }
    }
}
