//! Names the commit the binary was built from, for `imreport --version`: `git describe` of the
//! checkout when there is one (with `-dirty` for uncommitted changes), else "unknown".

fn main() {
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=IMREPORT_COMMIT={commit}");
    // Built again when the checkout moves to another commit (HEAD, the branch it names) or
    // its files change.
    let mut watched = vec!["../../.git/HEAD".to_owned(), "../../.git/index".to_owned()];
    if let Ok(head) = std::fs::read_to_string("../../.git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        watched.push(format!("../../.git/{branch}"));
    }
    for path in watched {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
