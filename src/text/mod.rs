//! The text front end: `.bnn` source to a verified IR graph, and back.
//!
//! `source bytes → (UTF-8 check) → parser → AST → lower → Graph → verify`.
//! Every error on the way is a [`SourceError`] that renders as
//! `file:line:col` with the source line, a caret and what was expected.

pub mod ast;
pub mod diagnostic;
pub mod lower;
pub mod parser;
pub mod print;

pub use diagnostic::{Diagnostic, SourceError};
pub use lower::LowerOptions;
pub use print::print;

use crate::ir::graph::Graph;
use crate::ir::verify::verify;
use ast::Span;

/// Parses, lowers and verifies a model file. `file` names it in diagnostics.
pub fn parse(file: &str, bytes: &[u8]) -> Result<Graph, SourceError> {
    parse_with(file, bytes, LowerOptions::default())
}

/// [`parse`] with lowering `options` (e.g. a search space at full width).
pub fn parse_with(file: &str, bytes: &[u8], options: LowerOptions) -> Result<Graph, SourceError> {
    let error = |source: String, diagnostic: Diagnostic| SourceError {
        file: file.to_string(),
        source,
        diagnostic,
    };
    let source = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let at = e.valid_up_to();
            // Lone carriage returns end lines here too (see below), so
            // the error's line and column are those of every other error.
            let lossy = lone_cr_to_lf(&String::from_utf8_lossy(bytes));
            let width = lossy[at..].chars().next().map_or(0, char::len_utf8);
            return Err(error(
                lossy,
                Diagnostic::at(
                    Span::new(at, at + width),
                    "the file is not valid UTF-8",
                    "invalid byte here",
                )
                .with_note("model files are UTF-8 text"),
            ));
        }
    };
    // A UTF-8 byte-order mark carries no meaning; editors on Windows write
    // one. A lone carriage return (classic Mac OS line ends) is a line end:
    // replaced by `\n`, one byte for one, so every span stays where it was.
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let normalized;
    let source = if source.contains('\r') {
        normalized = lone_cr_to_lf(source);
        normalized.as_str()
    } else {
        source
    };
    let ast = parser::parse_file(source).map_err(|e| {
        let mut d = Diagnostic::at(e.span, e.message, e.label);
        if let Some((span, label)) = e.secondary {
            d = d.with_secondary(span, label);
        }
        error(source.to_string(), d)
    })?;
    let graph = lower::lower_with(&ast, options).map_err(|d| error(source.to_string(), d))?;
    // Lowering builds a well-typed graph, so this is a consistency check.
    if let Err(e) = verify(&graph) {
        return Err(error(
            source.to_string(),
            Diagnostic::whole_file(e.to_string()),
        ));
    }
    Ok(graph)
}

/// `\r` not followed by `\n` becomes `\n`; `\r\n` stays.
fn lone_cr_to_lf(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() != Some(&'\n') {
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses a model from a string (named `<string>` in diagnostics).
pub fn parse_str(source: &str) -> Result<Graph, SourceError> {
    parse("<string>", source.as_bytes())
}
