//! Blocks taken out of the documentation, so tests run what a postmaster reads.
//!
//! Regions are delimited by HTML comments (`<!-- tour:begin -->` … `<!-- tour:end -->`),
//! single blocks are announced by a comment on the line right before them
//! (`<!-- config-check -->`). Fences are the usual three backticks with a language.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// The text between each `begin` marker and the `end` marker after it, in order.
pub fn regions<'a>(doc: &'a str, begin: &str, end: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(begin) {
        let after = &rest[start + begin.len()..];
        let stop = after
            .find(end)
            .unwrap_or_else(|| panic!("{begin} without a matching {end}"));
        found.push(&after[..stop]);
        rest = &after[stop + end.len()..];
    }
    found
}

/// The fenced blocks of language `lang` in `text`, in order, without their fences.
pub fn fenced(text: &str, lang: &str) -> Vec<String> {
    let opening = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    let mut other_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_end();
        match &mut current {
            Some(block) if trimmed == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None if other_fence => other_fence = trimmed != "```",
            None if trimmed == opening => current = Some(String::new()),
            None if trimmed.starts_with("```") => other_fence = true,
            None => {}
        }
    }
    assert!(current.is_none(), "unclosed ```{lang} block");
    blocks
}

/// Every fenced block of `lang` whose opening fence follows a line holding only
/// `marker`, with the 1-based line number of the marker.
pub fn marked(doc: &str, marker: &str, lang: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != marker {
            continue;
        }
        let fence = lines.get(i + 1).map(|l| l.trim_end()).unwrap_or_default();
        assert_eq!(
            fence,
            format!("```{lang}"),
            "line {}: {marker} must come right before a ```{lang} block",
            i + 1
        );
        let block = fenced(&lines[i + 1..].join("\n"), lang)
            .into_iter()
            .next()
            .unwrap();
        found.push((i + 1, block));
    }
    found
}

/// The commands of a shell block, one per entry: comment lines and blank lines dropped,
/// backslash continuations joined.
pub fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(trimmed);
        out.push(std::mem::take(&mut pending));
    }
    assert!(pending.is_empty(), "block ends inside a continued line");
    out
}

/// `PATH` with the folder of `binary` first, so blocks can say `mailauthd`.
pub fn path_with(binary: &str) -> String {
    let dir = Path::new(binary).parent().unwrap();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}
