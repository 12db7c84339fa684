//! Diagnostics: errors with source spans, rendered at the edge.
//!
//! Front-end stages return a [`Diagnostic`] value; only [`SourceError`]'s
//! `Display` turns it into text (`file:line:col`, the source line, a caret and
//! what was expected), through codespan-reporting, without colour, so the
//! rendered text is stable enough to snapshot.

use std::fmt;

use codespan_reporting::diagnostic::{Diagnostic as Report, Label as ReportLabel};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;

use super::ast::Span;

/// A labelled span.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What to say there (may be empty).
    pub message: String,
}

/// An error about a source file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The headline.
    pub message: String,
    /// The main location, if the error has one.
    pub primary: Option<Label>,
    /// Related locations.
    pub secondary: Vec<Label>,
    /// Extra lines: hints, the expected form.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn at(span: Span, message: impl Into<String>, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            primary: Some(Label {
                span,
                message: label.into(),
            }),
            secondary: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// An error about the whole file.
    pub fn whole_file(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            primary: None,
            secondary: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a related location.
    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
}

/// A diagnostic together with the file it is about: what the front end returns.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceError {
    /// The file's name as given (a path, or a name such as `<string>`).
    pub file: String,
    /// The file's text (lossily decoded if it was not UTF-8).
    pub source: String,
    /// The error.
    pub diagnostic: Diagnostic,
}

impl SourceError {
    /// The 1-based line and column of the primary label, if any.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        let span = self.diagnostic.primary.as_ref()?.span;
        let before = self.source.get(..span.start)?;
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some((line, col))
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.diagnostic;
        let file = SimpleFile::new(self.file.as_str(), self.source.as_str());
        let clamp = |s: Span| {
            let end = s.end.min(self.source.len());
            s.start.min(end)..end
        };
        let mut labels = Vec::new();
        if let Some(p) = &d.primary {
            labels.push(ReportLabel::primary((), clamp(p.span)).with_message(&p.message));
        }
        for s in &d.secondary {
            labels.push(ReportLabel::secondary((), clamp(s.span)).with_message(&s.message));
        }
        let mut notes = d.notes.clone();
        if d.primary.is_none() {
            notes.insert(0, format!("in {}", self.file));
        }
        let report = Report::error()
            .with_message(&d.message)
            .with_labels(labels)
            .with_notes(notes);
        let config = term::Config::default();
        match term::emit_into_string(&config, &file, &report) {
            Ok(text) => f.write_str(text.trim_end()),
            Err(_) => write!(f, "error: {}\n  in {}", d.message, self.file),
        }
    }
}

impl std::error::Error for SourceError {}
