//! The documentation, exercised: every config block marked `<!-- config-check -->` passes
//! the real `mailauthd config check`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

mod doc_blocks;

const BIN: &str = env!("CARGO_BIN_EXE_mailauthd");

/// The documents whose marked blocks are checked, by path in the repository.
fn documents() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(root).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A config made of a minimal base (state in `dir`) and `block`, with any client secret
/// file the block names replaced by one in `dir` (the test cannot write to /etc).
fn config_with(dir: &Path, block: &str, secret_file: Option<&Path>) -> std::path::PathBuf {
    let mut config = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n\n",
        dir.join("state"),
        dir.join("run")
    );
    for line in block.lines() {
        match (
            line.trim_start().starts_with("client_secret_file"),
            secret_file,
        ) {
            (true, Some(file)) => config.push_str(&format!("client_secret_file = {file:?}\n")),
            _ => {
                config.push_str(line);
                config.push('\n');
            }
        }
    }
    let path = dir.join("mailauthd.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn config_check(config: &Path) -> Output {
    Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "config", "check"])
        .env_remove("MAILAUTHD_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn every_marked_config_block_passes_config_check() {
    let mut checked = 0;
    for (name, doc) in documents() {
        for (line, block) in doc_blocks::marked(&doc, "<!-- config-check -->", "toml") {
            let dir = tempfile::tempdir().unwrap();
            let secret = dir.path().join("oidc-client-secret");
            std::fs::write(&secret, "  s3cret-from-the-provider\n").unwrap();
            let config = config_with(dir.path(), &block, Some(&secret));
            let out = config_check(&config);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name}:{line}: config check refused the block:\n{block}\n{}",
                text(&out)
            );
            let t = text(&out);
            if block.contains("[oidc]") {
                assert!(t.contains("identity provider"), "{name}:{line}: {t}");
            }
            if block.contains("[web]") {
                assert!(t.contains("web page"), "{name}:{line}: {t}");
            }
            checked += 1;

            // The check bites: without the secret file the same block is refused.
            if block.contains("client_secret_file") {
                let missing = dir.path().join("no-such-secret");
                let config = config_with(dir.path(), &block, Some(&missing));
                let out = config_check(&config);
                assert_eq!(out.status.code(), Some(2), "{name}:{line}: {}", text(&out));
                assert!(
                    text(&out).contains("oidc.client_secret_file"),
                    "{name}:{line}: {}",
                    text(&out)
                );
            }
        }
    }
    let oidc = documents()
        .into_iter()
        .find(|(name, _)| name == "docs/oidc.md")
        .unwrap()
        .1;
    for provider in [
        "kc.example.org/realms/",
        "authentik.example.org/application/o/",
    ] {
        assert!(
            doc_blocks::marked(&oidc, "<!-- config-check -->", "toml")
                .iter()
                .any(|(_, b)| b.contains(provider)),
            "docs/oidc.md has no checked block for {provider}"
        );
    }
    assert!(checked >= 5, "only {checked} marked config blocks found");
    eprintln!("{checked} config blocks from the documentation passed config check");
}

#[test]
fn doc_blocks_are_found_as_marked() {
    let doc = "intro\n<!-- a:begin -->\n```sh\none \\\n  two\n# note\n\nthree\n```\n\
               ```text\nnot this\n```\n<!-- a:end -->\n<!-- m -->\n```toml\nx = 1\n```\n";
    let region = doc_blocks::regions(doc, "<!-- a:begin -->", "<!-- a:end -->");
    assert_eq!(region.len(), 1);
    let sh = doc_blocks::fenced(region[0], "sh");
    assert_eq!(sh.len(), 1);
    assert_eq!(doc_blocks::commands(&sh[0]), vec!["one two", "three"]);
    assert_eq!(
        doc_blocks::marked(doc, "<!-- m -->", "toml"),
        vec![(14, "x = 1\n".to_string())]
    );
}
