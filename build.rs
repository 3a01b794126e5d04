//! Stamps the binary with the commit and the build date, for `guard --version`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // SOURCE_DATE_EPOCH (reproducible builds) when set, else today, in UTC.
    let date = match std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(secs) => civil_date(secs),
        None => civil_date(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        ),
    };
    println!("cargo:rustc-env=GUARD_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=GUARD_BUILD_DATE={date}");
    println!(
        "cargo:rustc-env=GUARD_BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    // Only files that exist: cargo takes a missing one as changed on every build, and a
    // fresh clone has no packed-refs (every `cargo build --release` then relinked with LTO).
    // HEAD moves on a checkout; the branch's own ref (loose, or in packed-refs) on a commit.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(branch);
        }
        for f in watched {
            let path = std::path::Path::new(&dir).join(&f);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}

/// YYYY-MM-DD of a Unix time (days-from-civil, inverted; no date crate in a build script).
fn civil_date(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
