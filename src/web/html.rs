//! HTML by hand: one escaping function every value goes through, and the page frame.

use std::fmt::Write;

/// Escapes text for element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's one script: shows a "Copy" button beside a secret and copies it. Allowed by
/// its hash in the Content-Security-Policy ([`copy_script_hash`]), so no other script can
/// run; without it (or without a clipboard) the button stays hidden and nothing is lost.
const COPY_SCRIPT: &str = "(function(){var b=document.getElementById('copy-secret'),s=document.getElementById('app-password');if(!b||!s||!navigator.clipboard)return;b.hidden=false;b.addEventListener('click',function(){navigator.clipboard.writeText(s.textContent.trim()).then(function(){b.textContent='Copied';});});})();";

/// The button and script that copy the secret in the element `app-password`.
pub fn copy_button() -> String {
    format!(
        "<p><button type=\"button\" id=\"copy-secret\" hidden>Copy the password</button></p>\n<script>{COPY_SCRIPT}</script>\n"
    )
}

/// The CSP source that allows [`COPY_SCRIPT`] and nothing else: `'sha256-…'`.
pub fn copy_script_hash() -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(COPY_SCRIPT.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #f6f7f9; --card: #fff; --line: #d6dae0; --accent: #1f5fbf; --bad: #a4262c; --good: #1e6b36; }
@media (prefers-color-scheme: dark) { :root { --fg: #e8eaed; --bg: #16181c; --card: #202329; --line: #3a3f47; --accent: #7fb0ff; --bad: #ff8a8f; --good: #7fd99a; } }
* { box-sizing: border-box; }
body { margin: 0; font: 1.05rem/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg); background: var(--bg); }
main { max-width: 40rem; margin: 0 auto; padding: 1rem; }
header { display: flex; justify-content: space-between; align-items: center; flex-wrap: wrap; gap: .5rem; }
h1 { font-size: 1.5rem; margin: .5rem 0; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
section, .card { background: var(--card); border: 1px solid var(--line); border-radius: .6rem; padding: 1rem; margin: 1rem 0; }
section > :first-child { margin-top: 0; }
section > :last-child { margin-bottom: 0; }
label { display: block; font-weight: 600; margin: .75rem 0 .25rem; }
input[type=text], input[type=email], input[type=password], input[type=date] { width: 100%; padding: .6rem; font: inherit; border: 1px solid var(--line); border-radius: .4rem; background: var(--bg); color: var(--fg); }
fieldset { border: 1px solid var(--line); border-radius: .4rem; margin: .75rem 0; padding: .5rem .75rem; }
fieldset label { display: inline-flex; align-items: center; gap: .35rem; font-weight: normal; margin: .25rem 1rem .25rem 0; min-height: 2.75rem; }
input[type=checkbox] { width: 1.3rem; height: 1.3rem; }
button, .button { display: inline-block; font: inherit; font-weight: 600; padding: .65rem 1.1rem; min-height: 2.75rem; border-radius: .4rem; border: 1px solid var(--accent); background: var(--accent); color: #fff; text-decoration: none; cursor: pointer; }
@media (prefers-color-scheme: dark) { button, .button { color: #0b1220; } }
button.quiet { background: transparent; color: var(--accent); }
button.danger { background: transparent; color: var(--bad); border-color: var(--bad); }
.notice { border-left: .35rem solid var(--good); }
.problem { border-left: .35rem solid var(--bad); }
.problem h2, .problem h1 { color: var(--bad); }
ul.items { list-style: none; padding: 0; margin: 0; }
ul.items li { border-top: 1px solid var(--line); padding: .75rem 0; }
ul.items li:first-child { border-top: none; }
dl { display: grid; grid-template-columns: minmax(5.5rem, max-content) 1fr; gap: .2rem .75rem; margin: .25rem 0; }
dt { color: inherit; opacity: .75; }
dd { margin: 0; overflow-wrap: anywhere; }
.secret { font: 1.2rem/1.4 ui-monospace, "DejaVu Sans Mono", monospace; letter-spacing: .05em; padding: .75rem; border: 2px dashed var(--accent); border-radius: .4rem; user-select: all; -webkit-user-select: all; overflow-wrap: anywhere; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; user-select: all; -webkit-user-select: all; }
.muted { opacity: .75; font-size: .95rem; }
.or { text-align: center; opacity: .75; margin: 1rem 0; }
"#;

/// A whole page. `body` is already-escaped HTML.
pub fn page(
    site: &str,
    title: &str,
    signed_in_as: Option<&str>,
    signout_csrf: Option<&str>,
    body: &str,
) -> String {
    let mut out = String::with_capacity(body.len() + STYLE.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{} – {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<header>\n<h1>{}</h1>\n",
        esc(title),
        esc(site),
        esc(site)
    );
    if let (Some(who), Some(csrf)) = (signed_in_as, signout_csrf) {
        let _ = writeln!(
            out,
            "<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <span class=\"muted\">{}</span> <button class=\"quiet\" type=\"submit\">Sign out</button></form>",
            esc(csrf),
            esc(who)
        );
    }
    out.push_str("</header>\n");
    out.push_str(body);
    out.push_str("\n</main>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_copy_script_is_the_one_its_hash_allows() {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        let button = super::copy_button();
        let start = button.find("<script>").unwrap() + "<script>".len();
        let end = button.find("</script>").unwrap();
        let digest = Sha256::digest(&button.as_bytes()[start..end]);
        let expected = format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        assert_eq!(super::copy_script_hash(), expected);
        assert!(
            button.contains("hidden"),
            "no button shows without the script"
        );
    }

    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn page_escapes_its_title_and_user() {
        let p = page("Mail <b>", "T", Some("a\"@x"), Some("tok"), "<p>ok</p>");
        assert!(p.contains("Mail &lt;b&gt;"));
        assert!(p.contains("a&quot;@x"));
        assert!(p.contains("<p>ok</p>"));
        assert!(p.contains("name=\"viewport\""));
    }
}
