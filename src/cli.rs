//! The command-line interface: flags and subcommands, parsed by clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failed (unhealthy, artifacts found by --check, a failing `guard check`, a step failed)
  2  usage or config error, or a failing check before a deploy: nothing was changed
  3  deploy failed and was rolled back: the previous version is verified healthy
  4  deploy or rollback failed and the service is NOT verified healthy: a human must act
  5  another guard run holds the lock for this app
  130/143  stopped by SIGINT/SIGTERM (after a restart guard rolls back first)";

/// `guard --version`: the version, the commit and the day it was built, and the target.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GUARD_BUILD_COMMIT"),
    ", built ",
    env!("GUARD_BUILD_DATE"),
    ", ",
    env!("GUARD_BUILD_TARGET"),
    ")"
);

/// Safe deploys for a PM2-run Node.js app: clean, back up, deploy, verify, roll back.
#[derive(Debug, Parser)]
#[command(name = "guard", version = VERSION, after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    /// Config file [default: guard.toml in the current folder or the nearest one above it]
    #[arg(long, global = true, env = "GUARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print one JSON document describing the outcome on stdout
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-vv for debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors and the final result line
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot the whole app folder, PM2's dump and the git commit into a new incident
    #[command(after_help = EXIT_CODES)]
    Backup(BackupArgs),
    /// Remove build artifacts (clean.paths, clean.globs) from the app dir
    #[command(after_help = EXIT_CODES)]
    Clean(CleanArgs),
    /// Back up, clean, run the deploy step, restart through PM2, verify, roll back on failure
    #[command(after_help = EXIT_CODES)]
    Deploy(DeployArgs),
    /// Show the app's PM2 state and its health endpoint
    #[command(after_help = EXIT_CODES)]
    Health(HealthArgs),
    /// Make the app folder identical to an incident, put it back in service the strategy's way
    /// (restart, rolling reload or proxy switch), prove it healthy
    #[command(after_help = EXIT_CODES)]
    Rollback(RollbackArgs),
    /// Read every stored content of the named incidents and check it against its hash
    /// (changes nothing; with --repair, stores again what the app folder still holds)
    #[command(after_help = EXIT_CODES)]
    Verify(VerifyArgs),
    /// What changed between two incidents, or an incident and the app folder now: files
    /// (with sizes), packages from package-lock.json, env keys (never values), the code
    #[command(after_help = EXIT_CODES)]
    Diff(DiffArgs),
    /// List this app's incidents (snapshots) in backup.dir, newest first
    #[command(after_help = EXIT_CODES, visible_alias = "list")]
    Incidents(IncidentsArgs),
    /// Show the audit log of runs that changed something
    #[command(after_help = EXIT_CODES)]
    History(HistoryArgs),
    /// Check the app and its setup: PM2 fail-fast policy, Sentry, .gitignore, pm2 save, file modes, room for a
    /// snapshot... each ok, warn or fail with a fix; changes nothing (exit 1 on a failure)
    #[command(after_help = EXIT_CODES)]
    Check(CheckArgs),
    /// Write a guard.toml for an app from its ecosystem file (never overwrites one)
    #[command(after_help = EXIT_CODES)]
    Init(InitArgs),
    /// Watch the app in the foreground (for systemd): report crashes, crash loops, a failing
    /// health check, memory and artifacts to [alert] destinations; roll back a failing recent
    /// deploy when [watch] rollback_within is set. Never takes the deploy lock; stops on
    /// SIGTERM with exit 0
    #[command(after_help = EXIT_CODES)]
    Watch(WatchArgs),
    /// Print a shell completion script: `guard completions bash > /etc/bash_completion.d/guard`
    #[command(after_help = EXIT_CODES)]
    Completions(CompletionsArgs),
    /// Print the man page (roff): `guard man > /usr/local/share/man/man1/guard.1`; with
    /// --dir, write one page per subcommand there (guard.1, guard-deploy.1, ...)
    #[command(after_help = EXIT_CODES)]
    Man(ManArgs),
}

/// Flags of `guard watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 127.0.0.1:9464:
    /// instances online, restarts, crash episodes, health probe result and latency, the last
    /// deploy, alerts sent and failed
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// Flags of `guard incidents`.
#[derive(Debug, Args)]
pub struct IncidentsArgs {
    /// Only the ids a rollback takes, one per line, `latest` first (for shell completion)
    #[arg(long)]
    pub ids: bool,
}

/// Flags of `guard man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write guard.1 and one page per subcommand (guard-deploy.1...) into this folder
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Flags of `guard completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Backup(_) => "backup",
            Command::Clean(_) => "clean",
            Command::Deploy(_) => "deploy",
            Command::Health(_) => "health",
            Command::Rollback(_) => "rollback",
            Command::Verify(_) => "verify",
            Command::Diff(_) => "diff",
            Command::Incidents(_) => "incidents",
            Command::History(_) => "history",
            Command::Check(_) => "check",
            Command::Init(_) => "init",
            Command::Watch(_) => "watch",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }
}

/// Flags of `guard backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Why this snapshot is taken (recorded in the manifest)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Flags of `guard clean`.
#[derive(Debug, Args)]
pub struct CleanArgs {
    /// List what would be removed, remove nothing
    #[arg(long, conflicts_with = "check")]
    pub dry_run: bool,
    /// Remove nothing; exit 1 and list what was found if anything is there
    #[arg(long)]
    pub check: bool,
}

/// Flags of `guard deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// On a failed verification leave things as they are (exit 4) instead of rolling back
    #[arg(long)]
    pub no_rollback: bool,
    /// What is being deployed (a tag, branch or commit): given to the deploy step as
    /// GUARD_REF (`deploy.command` may use "$GUARD_REF") and recorded with the incident
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// The deploy step to run instead of deploy.command (run in app.dir)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `guard health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Wait up to health.deadline for the app to become healthy and stay so for health.stable_for
    #[arg(long)]
    pub wait: bool,
}

/// Flags of `guard rollback`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["id", "incident"]))]
pub struct RollbackArgs {
    /// The incident to restore: an id like 20251222-110221 (or incident-20251222-110221), or `latest`
    #[arg(value_name = "ID|latest")]
    pub id: Option<String>,
    /// The same, as a flag (kept for scripts written for guard 0.1)
    #[arg(long, value_name = "ID|latest")]
    pub incident: Option<String>,
    /// Do not snapshot the current state first (a full disk); this rollback cannot be undone
    #[arg(long)]
    pub no_snapshot: bool,
}

/// Flags of `guard diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The incident to compare from: an id, or `latest`
    #[arg(value_name = "ID|latest")]
    pub from: String,
    /// What to compare with: another incident, or `current` (the app folder now; default)
    #[arg(value_name = "ID|current", default_value = "current")]
    pub to: String,
}

/// Flags of `guard check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Exit 1 on any warning too (for CI, and the final check after a fix)
    #[arg(long)]
    pub strict: bool,
    /// Only validate guard.toml, without the app folder, PM2 or node (a repository's CI can
    /// lint the config it ships): exit 0 valid, 2 invalid
    #[arg(long)]
    pub offline: bool,
}

/// Flags of `guard verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The incident to read: an id like 20251222-110221, or `latest` (default)
    #[arg(value_name = "ID|latest", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every incident of this app
    #[arg(long)]
    pub all: bool,
    /// Store a bad content again from the app folder, when a file there still holds exactly it
    #[arg(long)]
    pub repair: bool,
}

/// Flags of `guard init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The app's folder, where its ecosystem file is [default: the current folder]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The PM2 app to guard, when the ecosystem declares several
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
}

impl RollbackArgs {
    /// The incident asked for, as a word or with `--incident`.
    pub fn target(&self) -> &str {
        self.id
            .as_deref()
            .or(self.incident.as_deref())
            .unwrap_or("latest")
    }
}

/// Flags of `guard history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// How many of the newest entries to show
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
}

/// Bash: `guard rollback <TAB>` and `guard diff <TAB>` offer `latest` and this app's incident
/// ids, read from `guard incidents --ids` with the `--config` typed on the line.
const BASH_INCIDENTS: &str = r#"
_guard_incidents() {
    local cur="${COMP_WORDS[COMP_CWORD]}" config=() i
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} == --config ]]; then config=(--config "${COMP_WORDS[i+1]}"); fi
        if [[ ${COMP_WORDS[i]} == rollback || ${COMP_WORDS[i]} == diff || ${COMP_WORDS[i]} == verify ]]             && [[ $cur != -* ]] && [[ ${COMP_WORDS[COMP_CWORD-1]} != --config ]]; then
            COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" "${config[@]}" incidents --ids 2>/dev/null \
                | grep -E '^(latest|[0-9]{8}-[0-9]{6})$')" -- "$cur"))
            return 0
        fi
    done
    _guard "$@"
}
complete -F _guard_incidents -o nosort -o bashdefault -o default guard
"#;

/// Zsh: the same, then clap's own completion for everything else. Put in place of the end of
/// clap's script, so the first completion (when zsh autoloads `_guard`) already offers them.
const ZSH_INCIDENTS: &str = r#"
_guard_incidents() {
    setopt localoptions extendedglob
    local i config=()
    for ((i = 2; i < CURRENT; i++)); do
        if [[ ${words[i]} == --config ]]; then config=(--config "${words[i+1]}"); fi
        if [[ ${words[i]} == (rollback|diff|verify) && ${words[CURRENT]} != -* && ${words[CURRENT-1]} != --config ]]; then
            local -a ids
            ids=(${(f)"$("${words[1]}" "${config[@]}" incidents --ids 2>/dev/null)"})
            ids=(${(M)ids:#(latest|[0-9](#c8)-[0-9](#c6))})
            compadd -V incidents -- "${ids[@]}"
            return
        fi
    done
    _guard "$@"
}

if [ "$funcstack[1]" = "_guard" ]; then
    _guard_incidents "$@"
else
    compdef _guard_incidents guard
fi
"#;

/// The end of clap's zsh script, replaced by [`ZSH_INCIDENTS`].
const ZSH_CLAP_END: &str = r#"if [ "$funcstack[1]" = "_guard" ]; then
    _guard "$@"
else
    compdef _guard guard
fi
"#;

/// Fish: the same, beside clap's completions.
const FISH_INCIDENTS: &str = r#"
function __guard_incident_ids
    set -l tokens (commandline -opc)
    set -l config
    set -l i (contains -i -- --config $tokens)
    if test -n "$i"
        set config --config $tokens[(math $i + 1)]
    end
    $tokens[1] $config incidents --ids 2>/dev/null | string match -r '^(latest|[0-9]{8}-[0-9]{6})$'
end
complete -c guard -n '__fish_seen_subcommand_from rollback diff verify' -f -a '(__guard_incident_ids)'
"#;

/// Write the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "guard", &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        clap_complete::Shell::Bash => script.push_str(BASH_INCIDENTS),
        clap_complete::Shell::Fish => script.push_str(FISH_INCIDENTS),
        // If clap changed its script's end, its own completion still works, without ids
        // (the unit test below catches that).
        clap_complete::Shell::Zsh => {
            if let Some(at) = script.rfind(ZSH_CLAP_END) {
                script.replace_range(at.., ZSH_INCIDENTS);
            }
        }
        _ => {}
    }
    let _ = out.write_all(script.as_bytes());
}

/// The sections clap does not write: what every page of guard shares.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
success
.TP
1
failed (unhealthy, artifacts found, a failing check, a step failed)
.TP
2
usage or config error, or a failing check before a deploy: nothing was changed
.TP
3
deploy failed and was rolled back: the previous version is verified healthy
.TP
4
not verified healthy: a human must act
.TP
5
another guard run holds the lock for this app
.SH ENVIRONMENT
.TP
GUARD_CONFIG
the config file, when \fB\-\-config\fR is not given
.TP
PM2_HOME
the PM2 daemon to drive, when \fBpm2.home\fR is not set
.TP
NO_COLOR
no colour in the output
.SH FILES
.TP
guard.toml
the app's config: in the current folder or the nearest one above it, or \fB\-\-config\fR
.TP
backup.dir/incident\-*/
the snapshots (incidents) a rollback restores
.TP
backup.dir/audit.log
one JSON line per run that changed something
.SH EXAMPLES
.nf
guard check
guard deploy \-\-ref v42
guard health
guard rollback latest
guard watch \-\-metrics 127.0.0.1:9464
.fi
.SH "SEE ALSO"
\fBpm2\fR(1), \fBnginx\fR(8)
"#;

/// Write the man page of guard to `out`.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(out)?;
    out.write_all(MAN_EXTRA.as_bytes())
}

/// Write guard.1 and one page per subcommand (`guard-deploy.1`...) into `dir`; returns the
/// files written.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let mut page = |c: clap::Command| -> std::io::Result<()> {
        let man = clap_mangen::Man::new(c);
        let path = dir.join(man.get_filename());
        let mut text = Vec::new();
        man.render(&mut text)?;
        text.extend_from_slice(MAN_EXTRA.as_bytes());
        crate::atomic::write(&path, &text, 0o644).map_err(std::io::Error::other)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        page(sub)?;
    }
    page(cmd)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn one_man_page_per_subcommand_with_its_options_and_the_shared_sections() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(written.len() > 10, "{written:?}");
        let deploy = read("guard-deploy.1");
        assert!(deploy.contains("no\\-rollback"), "{deploy}");
        assert!(deploy.contains(".SH \"EXIT STATUS\"") && deploy.contains(".SH ENVIRONMENT"));
        let main = read("guard.1");
        // Every page guard.1 names exists.
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            let page = format!("guard-{}.1", sub.get_name());
            assert!(dir.path().join(&page).exists(), "{page} missing");
        }
        assert!(main.contains(".SH FILES") && main.contains(".SH EXAMPLES"));
        let watch = read("guard-watch.1");
        assert!(watch.contains("metrics"), "{watch}");
    }

    #[test]
    fn completions_and_the_man_page_come_from_the_clap_definitions() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in ["rollback", "incidents", "watch", "json"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
            if shell != clap_complete::Shell::Bash {
                assert!(
                    text.contains("incidents --ids") && !text.contains("compdef _guard guard"),
                    "{shell}: no incident ids"
                );
            }
        }
        let mut out = Vec::new();
        man(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{}",
            &text[..80]
        );
        assert!(text.contains("rollback") && text.contains("Exit codes"));
    }

    #[test]
    fn the_version_names_the_commit_and_build_date() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(
            VERSION.contains("commit ") && VERSION.contains("built 20"),
            "{VERSION}"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn deploy_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from(["guard", "deploy", "--", "git", "pull"]).unwrap();
        match cli.command {
            Command::Deploy(args) => assert_eq!(args.command, ["git", "pull"]),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn rollback_requires_an_incident_as_a_word_or_a_flag() {
        assert!(Cli::try_parse_from(["guard", "rollback"]).is_err());
        for argv in [
            &["guard", "rollback", "latest"][..],
            &["guard", "rollback", "--incident", "latest"][..],
        ] {
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Rollback(a) => assert_eq!(a.target(), "latest"),
                other => panic!("parsed as {other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["guard", "rollback", "latest", "--incident", "x"]).is_err());
    }

    #[test]
    fn list_is_an_alias_of_incidents_and_every_command_shows_the_exit_codes() {
        assert!(matches!(
            Cli::try_parse_from(["guard", "list"]).unwrap().command,
            Command::Incidents(_)
        ));
        let mut cmd = Cli::command();
        for sub in cmd.get_subcommands_mut() {
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Exit codes:"), "{} --help", sub.get_name());
        }
    }
}
