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
        if value.len() >= 3 {
            self.learn(value);
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// One value, in every form it can be printed in: as it is, and as JSON writes it inside
    /// a string (a `"` or `\` in a value would otherwise pass a mask applied to a JSON
    /// document). Callers sort once they have learned all.
    fn learn(&mut self, value: &str) {
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped
            .strip_prefix('"')
            .and_then(|e| e.strip_suffix('"'))
            .unwrap_or_default()
            .to_string();
        for v in [value.to_string(), escaped] {
            if !v.is_empty() && !self.secrets.contains(&v) {
                self.secrets.push(v);
            }
        }
    }

    /// A value of an env file or block with each of its lines (a PEM key is printed line by
    /// line), when it looks like a secret.
    fn learn_value(&mut self, value: &str) {
        for v in std::iter::once(value).chain(value.lines()) {
            let v = v.trim();
            if is_secret_like(v) {
                self.learn(v);
            }
        }
    }

    /// Learn the values of an ecosystem's `env` block (the keys that are settings excepted).
    pub fn add_pairs(&mut self, pairs: &[(String, Option<String>)]) {
        for (key, value) in pairs {
            if self.readable.contains(key) {
                continue;
            }
            let Some(value) = value else { continue };
            self.learn_value(value);
        }
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// Learn the values of an env file in every way a dotenv library may read it: `export`,
    /// comments, inline `# comments`, quoted values that span lines (a PEM key), `KEY: value`
    /// lines, and the readings where parsers differ (Node's dotenv 16 ends an unquoted value
    /// at any `#` and expands `\n` in double quotes; others keep both as written).
    pub fn add_env_text(&mut self, text: &str) {
        for (key, values) in env_readings(text) {
            if self.readable.contains(&key) {
                continue;
            }
            for value in values {
                self.learn_value(&value);
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

/// Every plausible reading of each value of a dotenv file: [`parse_env`]'s, plus what Node's
/// dotenv 16 makes of it (an unquoted value ends at the first `#`, `\n` and `\r` in double
/// quotes are expanded).
fn env_readings(text: &str) -> Vec<(String, Vec<String>)> {
    let raw: Vec<(String, String)> = parse_env(text);
    let mut lines_by_key: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in text.lines() {
        let l = line.trim_start();
        let l = l.strip_prefix("export ").unwrap_or(l);
        if let Some((k, rest)) = split_key(l) {
            lines_by_key.insert(k.trim(), rest.trim_start());
        }
    }
    raw.into_iter()
        .map(|(key, value)| {
            let mut values = vec![value.clone()];
            if let Some(rest) = lines_by_key.get(key.as_str()) {
                match rest.chars().next() {
                    Some('"') => values.push(value.replace("\\n", "\n").replace("\\r", "\r")),
                    Some('\'' | '`') => {}
                    _ => {
                        if let Some(i) = rest.find('#') {
                            values.push(rest[..i].trim_end().to_string());
                        }
                        values.push(rest.trim_end().to_string());
                    }
                }
            }
            values.dedup();
            (key, values)
        })
        .collect()
}

/// `KEY=rest` or `KEY: rest` (the YAML-like form dotenv also accepts).
fn split_key(line: &str) -> Option<(&str, &str)> {
    let eq = line.find('=');
    let colon = line.find(": ");
    let (k, rest) = match (eq, colon) {
        (Some(e), Some(c)) if c < e => (&line[..c], &line[c + 2..]),
        (Some(e), _) => (&line[..e], &line[e + 1..]),
        (None, Some(c)) => (&line[..c], &line[c + 2..]),
        (None, None) => return None,
    };
    let k = k.trim();
    let is_key = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    is_key.then_some((k, rest))
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
        let Some((key, rest)) = split_key(line) else {
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
    fn every_reading_a_dotenv_parser_may_make_is_masked() {
        let mut r = Redactor::default();
        r.add_env_text(
            "A=s3cretvalue#tail\nB=\"line1\\nline2secret\"\nC: colonsecret\nD=quote\"and\\back\n",
        );
        // Node's dotenv reads A as `s3cretvalue`; others as `s3cretvalue#tail`.
        assert_eq!(r.redact("s3cretvalue / s3cretvalue#tail"), "*** / ***");
        // Double-quoted `\n` is a newline for Node's dotenv: each line is printed alone.
        assert_eq!(r.redact("line2secret"), "***");
        assert_eq!(r.redact("line1\\nline2secret"), "***");
        assert_eq!(r.redact("colonsecret"), "***");
        // A value with `"` or `\\` as JSON writes it in a document.
        let doc = serde_json::json!({ "reason": "value quote\"and\\back here" }).to_string();
        assert!(!r.redact(&doc).contains("and"), "{}", r.redact(&doc));
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
