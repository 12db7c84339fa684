//! The arguments of one call, read parameter by parameter: positional then
//! keyword, each consumed once, with "did you mean" for a keyword nobody
//! asked for and the names nested calls get.

use super::*;

/// The arguments of one call, consumed parameter by parameter.
pub(super) struct Args<'e> {
    pub(super) callee: &'e Ident,
    pub(super) positional: Vec<(&'e Expr, String)>,
    pub(super) next: usize,
    pub(super) keywords: Vec<(&'e Ident, &'e Expr, String, bool)>,
    /// Parameters asked for so far, for "did you mean".
    pub(super) asked: Vec<&'e str>,
}

/// The candidate `word` was most likely meant to be: a close spelling, or else
/// a word that one of them shortens (`pad` for `padding`).
pub(super) fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    closest(word, candidates.iter().copied()).or_else(|| {
        let shortens = |a: &str, b: &str| a.len() >= 3 && b.starts_with(a);
        candidates
            .iter()
            .copied()
            .find(|&c| shortens(c, word) || shortens(word, c))
    })
}

/// The name a nested call or choose at argument `index` of node `parent` gets.
pub(super) fn child_names(parent: &str, exprs: &[&Expr]) -> Vec<String> {
    let callee = |e: &Expr| match &e.kind {
        ExprKind::Call { callee, .. } => Some(callee.name.clone()),
        ExprKind::Choose(_) => Some("choose".to_string()),
        _ => None,
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in exprs {
        if let Some(c) = callee(e) {
            *counts.entry(c).or_default() += 1;
        }
    }
    exprs
        .iter()
        .map(|e| match callee(e) {
            // Only calls and `choose` make nodes; this name is never used.
            None => format!("{parent}.{}", exprs.len()),
            Some(c) if counts[&c] == 1 => format!("{parent}.{c}"),
            Some(c) => {
                let k = seen.entry(c.clone()).or_default();
                *k += 1;
                format!("{parent}.{c}.{}", *k - 1)
            }
        })
        .collect()
}

impl<'e> Args<'e> {
    pub(super) fn new(
        callee: &'e Ident,
        args: &'e [Arg],
        parent: &str,
    ) -> Result<Args<'e>, Diagnostic> {
        let exprs: Vec<&Expr> = args.iter().map(|a| &a.value).collect();
        let names = child_names(parent, &exprs);
        let mut positional = Vec::new();
        let mut keywords: Vec<(&Ident, &Expr, String, bool)> = Vec::new();
        for (arg, name) in args.iter().zip(names) {
            match &arg.keyword {
                None if !keywords.is_empty() => {
                    return Err(Diagnostic::at(
                        arg.value.span,
                        "a positional argument cannot follow a keyword argument",
                        "positional argument after keywords",
                    )
                    .with_secondary(keywords[0].0.span, "first keyword argument"));
                }
                None => positional.push((&arg.value, name)),
                Some(k) => {
                    if let Some(prev) = keywords.iter().find(|p| p.0.name == k.name) {
                        return Err(Diagnostic::at(
                            k.span,
                            format!("`{}` is given twice", k.name),
                            "second time",
                        )
                        .with_secondary(prev.0.span, "first time"));
                    }
                    keywords.push((k, &arg.value, name, false));
                }
            }
        }
        Ok(Args {
            callee,
            positional,
            next: 0,
            keywords,
            asked: Vec::new(),
        })
    }

    /// The argument for parameter `param`, positional first, then by keyword.
    pub(super) fn take(
        &mut self,
        param: &'e str,
    ) -> Result<Option<(&'e Expr, String)>, Diagnostic> {
        self.asked.push(param);
        let keyword = self.keywords.iter_mut().find(|k| k.0.name == param);
        if self.next < self.positional.len() {
            let (e, n) = self.positional[self.next].clone();
            self.next += 1;
            if let Some(k) = keyword {
                return Err(Diagnostic::at(
                    k.0.span,
                    format!("`{param}` is given both by position and by keyword"),
                    "given again here",
                )
                .with_secondary(e.span, format!("`{param}` given by position")));
            }
            return Ok(Some((e, n)));
        }
        Ok(keyword.map(|k| {
            k.3 = true;
            (k.1, k.2.clone())
        }))
    }

    /// All remaining positional arguments (variadic ops).
    pub(super) fn rest(&mut self) -> Vec<(&'e Expr, String)> {
        let rest = self.positional[self.next..].to_vec();
        self.next = self.positional.len();
        rest
    }

    pub(super) fn missing(&self, param: &str, what: &str) -> Diagnostic {
        // A misspelt keyword is the likelier mistake than a forgotten argument.
        if let Some(k) = self.unused_keyword_like(param) {
            return Diagnostic::at(
                k.span,
                format!("`{}` has no argument `{}`", self.callee.name, k.name),
                format!("did you mean `{param}`?"),
            );
        }
        Diagnostic::at(
            self.callee.span,
            format!("`{}` is missing its `{param}` argument", self.callee.name),
            format!("needs `{param}` ({what})"),
        )
    }

    /// An unused keyword that looks like a misspelling of `param`.
    pub(super) fn unused_keyword_like(&self, param: &str) -> Option<&'e Ident> {
        self.keywords
            .iter()
            .find(|k| !k.3 && suggest(&k.0.name, &[param]).is_some())
            .map(|k| k.0)
    }

    /// Fails on leftover positional arguments or unknown keywords.
    pub(super) fn finish(&self) -> Result<(), Diagnostic> {
        if let Some((extra, _)) = self.positional.get(self.next) {
            return Err(Diagnostic::at(
                extra.span,
                format!(
                    "`{}` takes at most {} positional argument{}, found {}",
                    self.callee.name,
                    self.next,
                    if self.next == 1 { "" } else { "s" },
                    self.positional.len()
                ),
                "unexpected argument",
            )
            .with_note(format!(
                "`{}` takes: {}",
                self.callee.name,
                self.asked.join(", ")
            )));
        }
        if let Some(k) = self.keywords.iter().find(|k| !k.3) {
            let mut d = Diagnostic::at(
                k.0.span,
                format!("`{}` has no argument `{}`", self.callee.name, k.0.name),
                match suggest(&k.0.name, &self.asked) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "unknown argument".to_string(),
                },
            );
            d = d.with_note(format!(
                "`{}` takes: {}",
                self.callee.name,
                self.asked.join(", ")
            ));
            return Err(d);
        }
        Ok(())
    }
}
