//! What identifies the code that runs: a git commit, or outside git a tree fingerprint.

use serde::{Deserialize, Serialize};

/// A commit (kept whole) or a tree fingerprint (`tree 1a2b3c4d5e6f`). Records older than this
/// type may hold a commit shortened to 12 characters: [`Code::same`] treats a prefix as the
/// same commit, so a run is never shown as a change from a code to itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Code(String);

/// Hex digits a commit is shortened to for people.
const SHORT: usize = 12;

impl Code {
    /// A git commit.
    pub fn commit(hash: impl Into<String>) -> Code {
        Code(hash.into())
    }

    /// The fingerprint of a tree snapshot from its index's hash.
    pub fn tree(index_sha256: &str) -> Code {
        Code(format!(
            "tree {}",
            &index_sha256[..index_sha256.len().min(SHORT)]
        ))
    }

    /// Whether this is a git commit (not a tree fingerprint).
    pub fn is_commit(&self) -> bool {
        !self.0.starts_with("tree ")
    }

    /// As stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For people: a commit's first 12 characters, a tree fingerprint as it is.
    pub fn short(&self) -> &str {
        if self.is_commit() {
            &self.0[..self.0.len().min(SHORT)]
        } else {
            &self.0
        }
    }

    /// The same code, whichever of the two is shortened (at least 7 characters in common).
    pub fn same(&self, other: &Code) -> bool {
        if self.is_commit() != other.is_commit() {
            return false;
        }
        let (a, b) = (self.as_str(), other.as_str());
        let n = a.len().min(b.len());
        n >= 7 && a[..n] == b[..n]
    }
}

/// What a run did to the code, for one line of a listing: `  [a -> b]` for a change,
/// `  [tried b, rolled back to a]` for a release that was put back, nothing when nothing moved.
pub fn change_text(before: Option<&Code>, after: Option<&Code>, tried: Option<&Code>) -> String {
    match (before, after, tried) {
        (_, Some(a), Some(t)) if !t.same(a) => format!("  [tried {t}, rolled back to {a}]"),
        (Some(b), Some(a), _) if !b.same(a) => format!("  [{b} -> {a}]"),
        _ => String::new(),
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_whole_commit_and_its_short_form_are_the_same_code() {
        let full = Code::commit(FULL);
        let short = Code::commit(&FULL[..12]);
        assert!(full.same(&short) && short.same(&full));
        assert_eq!(full.short(), "0123456789ab");
        assert_eq!(full.to_string(), short.to_string());
        assert!(!full.same(&Code::commit("1123456789ab")));
    }

    #[test]
    fn trees_and_commits_never_match_and_trees_show_whole() {
        let t = Code::tree("0123456789abcdef99");
        assert_eq!(t.as_str(), "tree 0123456789ab");
        assert_eq!(t.short(), "tree 0123456789ab");
        assert!(!t.same(&Code::commit("0123456789ab")));
        assert!(t.same(&Code::tree("0123456789abcdef")));
    }

    #[test]
    fn a_listing_shows_a_change_a_put_back_release_or_nothing() {
        let (a, b) = (Code::commit("aaaaaaaaaaaa"), Code::commit("bbbbbbbbbbbb"));
        assert_eq!(
            change_text(Some(&a), Some(&b), None),
            "  [aaaaaaaaaaaa -> bbbbbbbbbbbb]"
        );
        assert_eq!(
            change_text(Some(&a), Some(&a), Some(&b)),
            "  [tried bbbbbbbbbbbb, rolled back to aaaaaaaaaaaa]"
        );
        assert_eq!(change_text(Some(&a), Some(&a), None), "");
    }

    #[test]
    fn serialises_as_the_plain_string() {
        let c = Code::commit(FULL);
        assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{FULL}\""));
        let back: Code = serde_json::from_str("\"tree 0123\"").unwrap();
        assert!(!back.is_commit());
    }
}
