//! The order bindings evaluate in: a binding may use names bound after it,
//! so each scope's bindings are sorted by what they refer to, and a cycle is
//! an error that shows it (`a → b → a`).

use super::*;

/// The names `expr` refers to, with where, in source order. A word given to an
/// op (`scale=channel`) is not a reference, even if a binding has that name.
pub(super) fn referenced_names<'e>(expr: &'e Expr, names: &mut Vec<(&'e str, Span)>) {
    match &expr.kind {
        ExprKind::Name(n) => names.push((n, expr.span)),
        ExprKind::Literal(_) => {}
        ExprKind::Pair(a, b) => {
            referenced_names(a, names);
            referenced_names(b, names);
        }
        ExprKind::Call { callee, args } => {
            let op = OpKind::callable(&callee.name).is_some();
            for a in args {
                let word = match &a.value.kind {
                    ExprKind::Name(_)
                        if a.keyword
                            .as_ref()
                            .is_some_and(|k| TRAINING_WORD_KEYWORDS.contains(&k.name.as_str())) =>
                    {
                        true
                    }
                    ExprKind::Name(n) => {
                        BOOL.iter().any(|w| w.0 == n)
                            || SCALE.iter().any(|w| w.0 == n)
                            || OUTPUT.iter().any(|w| w.0 == n)
                            || WEIGHTS.iter().any(|w| w.0 == n)
                            || WEIGHT_KIND.iter().any(|w| w.0 == n)
                    }
                    _ => false,
                };
                if !(op && word) {
                    referenced_names(&a.value, names);
                }
            }
        }
        ExprKind::Choose(alts) => {
            for a in alts {
                referenced_names(a, names);
            }
        }
    }
}

/// The error for `name`, used at `used_at`, depending on itself through `path`.
pub(super) fn cycle_error(used_at: Span, name: &str, path: &[&str]) -> Diagnostic {
    Diagnostic::at(
        used_at,
        format!("cycle: `{name}` depends on itself"),
        "used here before it has a value",
    )
    .with_note(cycle_note(path))
}

/// `the cycle: a -> b -> a`, eliding the middle of long cycles.
pub(super) fn cycle_note(path: &[&str]) -> String {
    const SHOWN: usize = 8;
    if path.len() <= SHOWN {
        return format!("the cycle: {}", path.join(" -> "));
    }
    let (head, tail) = (&path[..SHOWN / 2], &path[path.len() - SHOWN / 2..]);
    format!(
        "the cycle: {} -> ({} more) -> {}",
        head.join(" -> "),
        path.len() - SHOWN,
        tail.join(" -> ")
    )
}

/// The order to evaluate `bindings` in (indices into it): each binding after
/// the bindings of the list it names, source order otherwise, or the error for
/// a cycle among them. This is the order on-demand evaluation would take,
/// found without recursion, so that evaluating in it recurses only as deep as
/// expressions nest, however long a chain of bindings the source writes
/// backwards.
pub(super) fn evaluation_order(bindings: &[&ast::Binding]) -> Result<Vec<usize>, Diagnostic> {
    let index: HashMap<&str, usize> = bindings
        .iter()
        .enumerate()
        .map(|(k, b)| (b.name.name.as_str(), k))
        .collect();
    let deps: Vec<Vec<(usize, Span)>> = bindings
        .iter()
        .map(|b| {
            let mut names = Vec::new();
            referenced_names(&b.value, &mut names);
            names
                .iter()
                .filter_map(|&(n, span)| Some((*index.get(n)?, span)))
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; bindings.len()];
    let mut order = Vec::with_capacity(bindings.len());
    // An explicit depth-first stack: (binding, how many of its deps were visited).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..bindings.len() {
        if mark[root] != Mark::New {
            continue;
        }
        mark[root] = Mark::Open;
        stack.push((root, 0));
        while let Some((node, visited)) = stack.last_mut() {
            let node = *node;
            let Some(&(dep, used_at)) = deps[node].get(*visited) else {
                mark[node] = Mark::Done;
                order.push(node);
                stack.pop();
                continue;
            };
            *visited += 1;
            match mark[dep] {
                Mark::New => {
                    mark[dep] = Mark::Open;
                    stack.push((dep, 0));
                }
                Mark::Open => {
                    let start = stack.iter().position(|s| s.0 == dep).unwrap_or(0);
                    let mut path: Vec<&str> = stack[start..]
                        .iter()
                        .map(|s| bindings[s.0].name.name.as_str())
                        .collect();
                    let name = bindings[dep].name.name.as_str();
                    path.push(name);
                    return Err(cycle_error(used_at, name, &path));
                }
                Mark::Done => {}
            }
        }
    }
    Ok(order)
}
