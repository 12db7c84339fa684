//! Cell instances: a call of a cell binds its parameters (positional or
//! keyword, each exactly once) in a scope of its own, evaluates its body
//! under the instance's name prefix, and refuses recursion and nesting past
//! `MAX_CELL_DEPTH`.

use super::*;

/// The scope of one instance `name` of `cell`: its parameters bound to `params`,
/// its bindings declared.
pub(super) fn cell_scope<'a>(
    cell: &'a ast::Cell,
    params: Vec<(&'a Ident, Value)>,
    name: &str,
) -> Result<Scope<'a>, Diagnostic> {
    let mut scope = Scope {
        prefix: format!("{name}."),
        slots: HashMap::new(),
        active: Vec::new(),
    };
    for (p, v) in params {
        let slot = Slot {
            binding: None,
            state: State::Done(v),
        };
        if scope.slots.insert(&p.name, slot).is_some() {
            return Err(Diagnostic::at(
                p.span,
                format!("cell parameter `{}` is declared twice", p.name),
                "second time",
            ));
        }
    }
    for b in &cell.body {
        if scope
            .slots
            .get(b.name.name.as_str())
            .is_some_and(|s| s.binding.is_none())
        {
            let mut d = Diagnostic::at(
                b.name.span,
                format!(
                    "`{}` is a parameter of cell `{}` and cannot be rebound",
                    b.name.name, cell.name.name
                ),
                "rebinding a parameter",
            );
            if let Some(p) = cell.params.iter().find(|p| p.name == b.name.name) {
                d = d.with_secondary(p.span, "the parameter");
            }
            return Err(d.with_note("bind the new value to a new name"));
        }
        if let Some(first) = scope
            .slots
            .get(b.name.name.as_str())
            .and_then(|s| s.binding)
        {
            return Err(Diagnostic::at(
                b.name.span,
                format!("`{}` is defined twice", b.name.name),
                "second definition",
            )
            .with_secondary(first.name.span, "first definition"));
        }
        scope.slots.insert(
            &b.name.name,
            Slot {
                binding: Some(b),
                state: State::Pending,
            },
        );
    }
    Ok(scope)
}

/// The error for a cell call nested more than [`MAX_CELL_DEPTH`] deep.
pub(super) fn cells_too_deep(callee: &Ident) -> Diagnostic {
    Diagnostic::at(
        callee.span,
        format!("cells nest more than {MAX_CELL_DEPTH} deep"),
        "here",
    )
}

/// The error for an argument of a cell call that no parameter takes, if any.
pub(super) fn leftover_cell_argument(reader: &Args<'_>, cell: &ast::Cell) -> Option<Diagnostic> {
    if let Some((extra, _)) = reader.positional.get(reader.next) {
        return Some(
            Diagnostic::at(
                extra.span,
                format!(
                    "cell `{}` takes {} argument{}, found {}",
                    cell.name.name,
                    cell.params.len(),
                    if cell.params.len() == 1 { "" } else { "s" },
                    reader.positional.len()
                ),
                "unexpected argument",
            )
            .with_secondary(cell.name.span, "cell defined here"),
        );
    }
    let k = reader.keywords.iter().find(|k| !k.3)?;
    let params: Vec<&str> = cell.params.iter().map(|p| p.name.as_str()).collect();
    let label = match suggest(&k.0.name, &params) {
        Some(s) => format!("did you mean `{s}`?"),
        None => "unknown parameter".into(),
    };
    Some(
        Diagnostic::at(
            k.0.span,
            format!("cell `{}` has no parameter `{}`", cell.name.name, k.0.name),
            label,
        )
        .with_secondary(cell.name.span, "cell defined here"),
    )
}

/// The error for a cell call that gives no argument for parameter `p`.
pub(super) fn missing_cell_argument(reader: &Args<'_>, cell: &ast::Cell, p: &Ident) -> Diagnostic {
    // A misspelt keyword is the likelier mistake than a forgotten argument.
    if let Some(k) = reader.unused_keyword_like(&p.name) {
        return Diagnostic::at(
            k.span,
            format!("cell `{}` has no parameter `{}`", cell.name.name, k.name),
            format!("did you mean `{}`?", p.name),
        )
        .with_secondary(p.span, "parameter declared here");
    }
    Diagnostic::at(
        reader.callee.span,
        format!(
            "cell `{}` is missing its `{}` argument",
            cell.name.name, p.name
        ),
        format!("needs `{}`", p.name),
    )
    .with_secondary(p.span, "parameter declared here")
}

impl<'a> Lowerer<'a> {
    /// A call of `cell`: its body evaluated under the prefix `name.`.
    pub(super) fn instantiate(
        &mut self,
        caller: &mut Scope<'a>,
        cell: &'a ast::Cell,
        callee: &'a Ident,
        call_span: Span,
        args: &'a [Arg],
        name: &str,
    ) -> Result<Value, Diagnostic> {
        if self.cell_stack.iter().any(|c| c.0 == cell.name.name) {
            return Err(self.recursive_cell(cell, callee));
        }
        if self.cell_stack.len() >= MAX_CELL_DEPTH {
            return Err(cells_too_deep(callee));
        }
        let mut params = self.cell_arguments(caller, cell, callee, args, name)?;
        let split = self.partial_split(cell, &mut params, name, call_span)?;
        let mut scope = cell_scope(cell, params, name)?;
        self.cell_stack.push((&cell.name.name, call_span));
        let body: Vec<&ast::Binding> = cell.body.iter().collect();
        for k in evaluation_order(&body)? {
            let b = body[k];
            self.binding_value(&mut scope, &b.name.name, b.name.span)?;
        }
        let ret_name = child_names(name, &[&cell.ret]).remove(0);
        let value = self.eval(&mut scope, &cell.ret, &ret_name, None);
        self.cell_stack.pop();
        match split {
            Some(split) => self.partial_join(split, value?, name),
            None => value,
        }
    }

    #[cold]
    pub(super) fn recursive_cell(&self, cell: &ast::Cell, callee: &Ident) -> Diagnostic {
        let chain: Vec<&str> = self.cell_stack.iter().map(|c| c.0).collect();
        Diagnostic::at(
            callee.span,
            format!("cell `{}` instantiates itself", cell.name.name),
            "recursive instantiation",
        )
        .with_note(format!(
            "the chain: {} -> {}",
            chain.join(" -> "),
            cell.name.name
        ))
    }

    /// The values of a cell call's arguments, evaluated in the caller's scope,
    /// paired with the cell's parameters.
    pub(super) fn cell_arguments(
        &mut self,
        caller: &mut Scope<'a>,
        cell: &'a ast::Cell,
        callee: &'a Ident,
        args: &'a [Arg],
        name: &str,
    ) -> Result<Vec<(&'a Ident, Value)>, Diagnostic> {
        let mut reader = Args::new(callee, args, name)?;
        let mut params = Vec::new();
        for p in &cell.params {
            let arg = reader.take(&p.name)?;
            let Some((expr, child)) = arg else {
                return Err(missing_cell_argument(&reader, cell, p));
            };
            let v = self.eval(caller, expr, &child, None)?;
            params.push((p, v));
        }
        match leftover_cell_argument(&reader, cell) {
            Some(d) => Err(d),
            None => Ok(params),
        }
    }
}
