//! Aligned text tables for the CLI's reports (`train`'s heads, `bench model`): one
//! place that knows how columns are sized and aligned, so every table reads alike.

use std::io::Write;

/// How a column's cells line up: text left, numbers right.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows of cells under a header; each column as wide as its widest cell.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// Adds a row; missing cells print empty, extra ones are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let cell = |row: &[String], i: usize| row.get(i).map_or(String::new(), |c| c.clone());
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| self.rows.iter().map(|r| cell(r, i).chars().count()).fold(self.columns[i].0.len(), usize::max))
            .collect();
        let line = |cells: Vec<String>| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&self.columns)
                .zip(&widths)
                .map(|((c, (_, align)), &w)| match align {
                    Align::Left => format!("{c:<w$}"),
                    Align::Right => format!("{c:>w$}"),
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        writeln!(out, "{}", line(self.columns.iter().map(|(h, _)| h.to_string()).collect()))?;
        for r in &self.rows {
            writeln!(out, "{}", line((0..self.columns.len()).map(|i| cell(r, i)).collect()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        let mut t = Table::new(&[("head", Align::Left), ("acc", Align::Right)]);
        t.row(vec!["view".into(), "0.987".into()]);
        t.row(vec!["front/bmw".into(), "1".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "head         acc\nview       0.987\nfront/bmw      1\n");
    }
}
