//! Tables for people, JSON for scripts.

use serde::Serialize;

pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn json<T: Serialize + ?Sized>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("mailauthd: cannot encode JSON: {e}"),
        }
    }

    /// Prints `value` as JSON, or the table when a person is reading.
    pub fn list<T: Serialize>(&self, value: &[T], headers: &[&str], rows: Vec<Vec<String>>) {
        if self.json {
            self.json(value);
        } else if rows.is_empty() {
            println!("(none)");
        } else {
            print!("{}", table(headers, &rows));
        }
    }

    /// [`Output::list`] with one row per item, made by `row`.
    pub fn rows<T: Serialize>(
        &self,
        value: &[T],
        headers: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) {
        self.list(value, headers, value.iter().map(row).collect());
    }

    /// Key/value lines for one record, or the record as JSON.
    pub fn record<T: Serialize>(&self, value: &T, fields: &[(&str, String)]) {
        if self.json {
            self.json(value);
            return;
        }
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in fields {
            println!("{k:<width$}  {v}");
        }
    }

    /// A one-line confirmation for people; scripts get `{"ok": true, ...}`.
    pub fn done(&self, message: &str) {
        if self.json {
            self.json(&serde_json::json!({ "ok": true, "message": message }));
        } else {
            println!("{message}");
        }
    }
}

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }
}
