//! The one printer: human lines, a JSON document, or quiet; every text passes the redactor.

use crate::code::Code;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exit::ExitStatus;
use crate::redact::Redactor;

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per step, for a person in an ssh session or a log.
    Human,
    /// One JSON document on stdout at the end.
    Json,
    /// Only the final line.
    Quiet,
}

/// Which step a line is about: one name per step, as shown and as `steps[].name` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepName {
    /// `guard check`'s rules, run before a deploy changes anything.
    Check,
    /// Taking the app's lock (a take-over of a dead run's lock is said here).
    Lock,
    /// What `rollback latest` passed over.
    Latest,
    /// The incident a rollback restores, checked before anything changes.
    Incident,
    /// Taking a snapshot.
    Backup,
    /// Removing artifacts before the deploy step.
    Clean,
    /// Removing artifacts after the deploy step.
    CleanAgain,
    /// The deploy step.
    DeployStep,
    /// Loading the release's ecosystem and checking what it names.
    Ecosystem,
    /// The trial of a release on a spare port.
    Preflight,
    /// PM2's rolling reload.
    Reload,
    /// pm2 delete + start.
    Restart,
    /// `switch`: starting a release beside the live one, on the idle port.
    Start,
    /// `switch`: pointing the proxy at another port.
    Switch,
    /// `switch`: stopping the release the proxy no longer sends traffic to.
    Stop,
    /// `switch`: keeping the previous release warm for an instant rollback.
    Keep,
    /// The verification of what was started.
    Verify,
    /// `pm2 save`.
    Pm2Save,
    /// One look at an app guard left running (not restarted).
    Running,
    /// Putting an incident's files back.
    Restore,
    /// A rollback that stopped on an error.
    Rollback,
    /// Sending an outcome to the alert destinations.
    Alert,
    /// A deploy that stopped on an error after its snapshot.
    Deploy,
    /// A `[hooks]` command.
    Hook,
}

impl StepName {
    /// The name shown and recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Check => "check",
            StepName::Lock => "lock",
            StepName::Latest => "latest",
            StepName::Incident => "incident",
            StepName::Backup => "backup",
            StepName::Clean => "clean",
            StepName::CleanAgain => "clean again",
            StepName::DeployStep => "deploy step",
            StepName::Ecosystem => "ecosystem",
            StepName::Preflight => "preflight",
            StepName::Reload => "reload",
            StepName::Restart => "restart",
            StepName::Start => "start",
            StepName::Switch => "switch",
            StepName::Stop => "stop",
            StepName::Keep => "keep",
            StepName::Verify => "verify",
            StepName::Pm2Save => "pm2 save",
            StepName::Running => "running",
            StepName::Restore => "restore",
            StepName::Rollback => "rollback",
            StepName::Alert => "alert",
            StepName::Deploy => "deploy",
            StepName::Hook => "hook",
        }
    }
}

/// The state of a finished step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Done.
    Ok,
    /// Done, with something worth a look.
    Warn,
    /// Failed.
    Failed,
}

/// One step of a command, as shown and as recorded in JSON and the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Short name: clean, backup, deploy step, restart, verify, rollback...
    pub name: String,
    /// Outcome.
    pub state: StepState,
    /// One line saying what happened.
    pub detail: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// The version of the `--json` document's shape; raised when a field changes meaning or goes.
pub const SCHEMA: u32 = 2;

/// The outcome document of one command.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The shape version of this document ([`SCHEMA`]).
    pub schema: u32,
    /// The subcommand.
    pub command: String,
    /// The host it ran on.
    pub host: String,
    /// When the run started, RFC 3339 UTC.
    pub started_at: String,
    /// When the outcome was printed, RFC 3339 UTC.
    pub finished_at: String,
    /// From start to outcome.
    pub duration_ms: u64,
    /// The PM2 app name, when the config was read.
    pub app: Option<String>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// The incident taken or used.
    pub incident: Option<String>,
    /// The commit (or tree fingerprint) in place before the run, for deploy and rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<crate::code::Code>,
    /// The commit (or tree fingerprint) the run put in place: what a deploy deployed, what a
    /// rollback restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<crate::code::Code>,
    /// What the deploy was asked to deploy (`guard deploy --ref`).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The release a deploy tried and put back (absent when what it tried is what runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tried: Option<crate::code::Code>,
    /// `success`, `failed`, `rolled back`...
    pub verdict: String,
    /// Why, in one line.
    pub reason: Option<String>,
    /// The process exit code.
    pub exit_code: i32,
    /// Command-specific data (health status, incident list...).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

/// Prints steps as they finish and the outcome once.
#[derive(Debug)]
pub struct Printer {
    mode: Mode,
    color: bool,
    /// stdout is a terminal: progress is one line rewritten in place.
    tty: bool,
    /// A progress line is on the terminal and must be cleared before the next line.
    live: std::cell::Cell<bool>,
    /// When the last progress line was printed off a terminal.
    last_progress: std::cell::Cell<Option<std::time::Instant>>,
    /// The phase of the last progress line printed off a terminal.
    last_phase: std::cell::RefCell<String>,
    /// When the run started (for `duration_ms`).
    started: std::time::Instant,
    redactor: Redactor,
    report: Report,
}

impl Printer {
    /// The subcommand this printer reports (`deploy`, `rollback`...).
    pub fn command(&self) -> &str {
        &self.report.command
    }

    /// A printer for `command`.
    pub fn new(mode: Mode, command: &str) -> Printer {
        let color = mode == Mode::Human
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Printer {
            mode,
            color,
            tty: std::io::stdout().is_terminal(),
            live: std::cell::Cell::new(false),
            last_progress: std::cell::Cell::new(None),
            last_phase: std::cell::RefCell::new(String::new()),
            redactor: Redactor::default(),
            started: std::time::Instant::now(),
            report: Report {
                schema: SCHEMA,
                command: command.to_string(),
                host: crate::origin::host(),
                started_at: crate::origin::now_rfc3339(),
                finished_at: String::new(),
                duration_ms: 0,
                app: None,
                steps: Vec::new(),
                incident: None,
                before: None,
                after: None,
                tried: None,
                git_ref: None,
                verdict: String::new(),
                reason: None,
                exit_code: 0,
                data: serde_json::Value::Null,
            },
        }
    }

    /// Mask these secrets in everything printed from now on.
    pub fn set_redactor(&mut self, redactor: Redactor) {
        self.redactor = redactor;
    }

    /// The redactor in force.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Record the app name.
    pub fn set_app(&mut self, app: &str) {
        self.report.app = Some(app.to_string());
    }

    /// Record the incident this run took or used.
    pub fn set_incident(&mut self, id: &str) {
        self.report.incident = Some(id.to_string());
    }

    /// Record what the run was asked to deploy (`--ref`).
    pub fn set_ref(&mut self, git_ref: Option<String>) {
        self.report.git_ref = git_ref;
    }

    /// The ref set with [`Printer::set_ref`].
    pub fn git_ref(&self) -> Option<String> {
        self.report.git_ref.clone()
    }

    /// The codes set with [`Printer::set_codes`]: before, after, tried.
    pub fn codes(&self) -> (Option<Code>, Option<Code>, Option<Code>) {
        (
            self.report.before.clone(),
            self.report.after.clone(),
            self.report.tried.clone(),
        )
    }

    /// Record the code before and after the run (commit, or tree fingerprint), and what a
    /// deploy tried when that is not what runs now (it was put back).
    pub fn set_codes(&mut self, before: Option<Code>, after: Option<Code>, tried: Option<Code>) {
        self.report.before = before;
        self.report.tried = tried.filter(|t| after.as_ref().is_none_or(|a| !a.same(t)));
        self.report.after = after;
    }

    /// Attach command-specific data (a `Serialize` type of `report`) to the JSON document.
    pub fn set_data(&mut self, data: &impl Serialize) {
        self.report.data = serde_json::to_value(data)
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("serialising data: {e}") }));
    }

    /// Where a long wait stands (a verification): on a terminal one line rewritten in place
    /// every second, off a terminal (ssh without a tty, a log) a line every 5 s, so a quiet
    /// stability window never looks like a hang; nothing with `-q` or `--json`.
    pub fn progress(&self, step: StepName, text: &str) {
        let step = step.as_str();
        if self.mode != Mode::Human {
            return;
        }
        let text = format!("....  {step:<12} {text}");
        if self.tty {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "\r\x1b[K{}", sanitize(&text));
            let _ = stdout.flush();
            self.live.set(true);
        } else {
            // Off a terminal (a log, CI): a line every 5 s at most, and one at once when the
            // phase changes ("waiting for a first healthy answer" -> "healthy, stable window"),
            // so a log shows every phase however short.
            let phase = text
                .split([',', ':'])
                .next()
                .unwrap_or_default()
                .to_string();
            let new_phase = *self.last_phase.borrow() != phase;
            if new_phase
                || self
                    .last_progress
                    .get()
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(4900))
            {
                self.last_progress.set(Some(std::time::Instant::now()));
                self.last_phase.replace(phase);
                out(&sanitize(&text));
            }
        }
    }

    /// Clear a progress line before printing anything else.
    fn clear_live(&self) {
        if self.live.replace(false) {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "\r\x1b[K");
            let _ = stdout.flush();
        }
        self.last_progress.set(None);
        self.last_phase.replace(String::new());
    }

    /// Record and show a finished step.
    pub fn step(
        &mut self,
        step: StepName,
        state: StepState,
        took: Duration,
        detail: impl AsRef<str>,
    ) {
        let name = step.as_str();
        // One line per step: a multi-line cause (a command's last output lines) is joined.
        let detail = sanitize(&self.redactor.redact(detail.as_ref()).replace('\n', " | "));
        self.clear_live();
        if self.mode == Mode::Human {
            let (word, color) = match state {
                StepState::Ok => ("ok", "32"),
                StepState::Warn => ("warn", "33"),
                StepState::Failed => ("FAIL", "31"),
            };
            let word = self.paint(&format!("{word:<4}"), color);
            out(&format!(
                "{word}  {name:<12} {detail} ({})",
                fmt_duration(took)
            ));
        }
        self.report.steps.push(Step {
            name: name.to_string(),
            state,
            detail,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        });
    }

    /// An indented line of detail under the last step (log tails, lists); human mode only.
    pub fn detail(&self, line: impl AsRef<str>) {
        self.clear_live();
        if self.mode == Mode::Human {
            out(&format!(
                "      {}",
                sanitize(&self.redactor.redact(line.as_ref()))
            ));
        }
    }

    /// Output a command printed that the operator must see when it failed, even with `-q`
    /// (in human mode it was shown as it ran; in JSON it is in the document): on stderr.
    pub fn failed_output(&self, title: &str, lines: &[String]) {
        if self.mode == Mode::Quiet && !lines.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{title}");
            for l in lines {
                let _ = writeln!(err, "  {}", sanitize(&self.redactor.redact(l)));
            }
        }
    }

    /// A row of a listing (`incidents`, `history`): printed with `-q` too, since the rows are
    /// what was asked for.
    pub fn row(&self, line: impl AsRef<str>) {
        if self.mode != Mode::Json {
            out(&sanitize(&self.redactor.redact(line.as_ref())));
        }
    }

    /// A plain line on stdout in human mode (tables, status blocks).
    pub fn line(&self, line: impl AsRef<str>) {
        self.clear_live();
        if self.mode == Mode::Human {
            out(&sanitize(&self.redactor.redact(line.as_ref())));
        }
    }

    /// An event of `guard watch`, as it happens: a line (with `-q` too: events are what was
    /// asked for), or one JSON line per event with `--json`.
    pub fn event(&self, alert: &crate::alert::Alert) {
        if self.mode == Mode::Json {
            let line = serde_json::to_string(alert).unwrap_or_default();
            out(&self.redactor.redact(&line));
            return;
        }
        let mut text = format!(
            "{}  {:<8} {:<15} {}",
            alert.at, alert.severity, alert.event, alert.message
        );
        if let Some(id) = &alert.incident {
            text.push_str(&format!(" (incident {id})"));
        }
        let color = match alert.severity {
            crate::alert::Severity::Info => "32",
            crate::alert::Severity::Warning => "33",
            crate::alert::Severity::Critical => "31;1",
        };
        out(&self.paint(&sanitize(&self.redactor.redact(&text)), color));
    }

    /// Print the outcome and return the report for the audit log.
    pub fn finish(&mut self, status: ExitStatus, summary: &str) -> Report {
        self.clear_live();
        let masked = self.redactor.redact(summary);
        let summary = sanitize(&masked);
        self.stamp_end();
        self.report.verdict = status.to_string();
        self.report.exit_code = status.code();
        if !summary.is_empty() {
            self.report.reason = Some(keep_lines(&masked));
        }
        match self.mode {
            Mode::Json => {
                // After a stream of JSON lines (`watch`), the last document is a line too.
                let doc = if self.report.command == "watch" {
                    serde_json::to_string(&self.report)
                } else {
                    serde_json::to_string_pretty(&self.report)
                };
                let doc =
                    doc.unwrap_or_else(|e| format!("{{\"error\":\"serialising report: {e}\"}}"));
                out(&self.redactor.redact(&doc));
            }
            Mode::Human | Mode::Quiet => {
                if !summary.is_empty() {
                    let color = if status == ExitStatus::Success {
                        "32"
                    } else {
                        "31;1"
                    };
                    let head = self.paint(&format!("{}:", status), color);
                    out(&format!("{head} {summary} (exit {})", status.code()));
                }
            }
        }
        self.report.clone()
    }

    /// A command line clap refused, as the JSON document (`--json` only; exit 2).
    pub fn usage_error(&mut self, reason: &str) {
        self.stamp_end();
        self.report.verdict = ExitStatus::Usage.to_string();
        self.report.exit_code = ExitStatus::Usage.code();
        self.report.reason = Some(reason.to_string());
        if self.mode == Mode::Json {
            out(&serde_json::to_string_pretty(&self.report).unwrap_or_default());
        }
    }

    /// The report as it stands.
    pub fn report(&self) -> Report {
        self.report.clone()
    }

    /// Print a value that scripts read as the last line of stdout (the incident id).
    pub fn last_line(&self, value: &str) {
        if self.mode != Mode::Json {
            out(value);
        }
    }

    /// Report an error that ended the command: `error:` and its causes on stderr, and the JSON document.
    pub fn error(&mut self, err: &anyhow::Error, status: ExitStatus) {
        self.clear_live();
        // Messages may span lines (a TOML error points at the line); keep the breaks, indented.
        let mut chain = err.chain().map(|c| {
            self.redactor
                .redact(&c.to_string())
                .lines()
                .map(sanitize)
                .collect::<Vec<_>>()
                .join("\n  ")
        });
        let first = chain.next().unwrap_or_default();
        let mut text = format!("error: {first}");
        for cause in chain {
            text.push_str(&format!("\n  caused by: {cause}"));
        }
        let _ = writeln!(std::io::stderr(), "{text}");
        // Recorded whatever the mode: the audit log keeps the real exit code and the cause.
        self.stamp_end();
        self.report.verdict = status.to_string();
        self.report.exit_code = status.code();
        self.report.reason = Some(keep_lines(&self.redactor.redact(&format!("{err:#}"))));
        if self.mode == Mode::Json {
            let doc = serde_json::to_string_pretty(&self.report).unwrap_or_default();
            out(&self.redactor.redact(&doc));
        }
    }

    fn stamp_end(&mut self) {
        self.report.finished_at = crate::origin::now_rfc3339();
        self.report.duration_ms = crate::verdict::ms(self.started.elapsed());
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Write a line to stdout; a closed stdout (ssh dropped) must never stop a deploy, so errors are ignored.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Remove ANSI escape sequences (pm2's and git's colours, cursor moves) from text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..~
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // A character set designation (`ESC ( B`): one more character.
            Some('(' | ')' | '*' | '+') => {
                chars.next();
            }
            // OSC: up to BEL or ESC \
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Strip escape sequences and replace other control characters, so text from files and
/// commands cannot drive the terminal.
pub fn sanitize(text: &str) -> String {
    strip_ansi(text)
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// Like [`sanitize`], keeping line breaks: a reason in JSON keeps its lines (JSON escapes
/// them), where a terminal line would be broken by them.
pub fn keep_lines(text: &str) -> String {
    strip_ansi(text)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' && c != '\n' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `0.25s`, `12.3s`, `2m05s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.2}s")
    } else if secs < 120.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "0.25s");
        assert_eq!(fmt_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn control_characters_are_neutralised_and_colours_dropped() {
        assert_eq!(sanitize("a\x1b[31mb\tc\x1b[0m"), "ab\tc");
        assert_eq!(sanitize("x\x1b]0;title\x07y\x08z"), "xy?z");
        assert_eq!(sanitize("tput sgr0: \x1b(B\x1b[m done"), "tput sgr0:  done");
        assert_eq!(keep_lines("a\nb\x1b[31m\x07c"), "a\nb?c");
        assert_eq!(strip_ansi("[PM2] \x1b[32m✓\x1b[39m done"), "[PM2] ✓ done");
    }
}
