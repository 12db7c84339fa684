//! The optimisation passes and the pass manager.
//!
//! Each pass is one file with one entry point,
//! `run(&mut Graph, &mut PassCx) -> Result<Changed, PassError>`, and a module
//! doc that states its pattern, its rewrite and why the rewrite is sound.
//! Passes edit the graph through [`patch::Patch`], so they read as
//! *pattern → patch*. [`PIPELINE`] lists every pass in the default order;
//! [`optimize`] runs a [`PassSelection`] of them, verifying the graph and
//! checking the parameters after each one.
//!
//! # The default pipeline, and why in this order
//!
//! 1. `fold_projection` first: it turns a PCNN-projected layer into an
//!    ordinary binary one, whose latent weights the folds below read.
//!    `eliminate_identity` next, so that no pattern below has to look
//!    through an `identity`.
//! 2. `fold_batchnorm` folds batchnorms into the real `conv2d`/`dense` before
//!    them. It leaves alone every batchnorm a later pass folds better: after a
//!    binary layer (`fold_scale_and_bn` folds it into the layer's epilogue),
//!    or feeding a `sign` directly or through a `maxpool` (those become exact
//!    thresholds). The rest become `affine`.
//! 3. `binary_maxpool` runs before `fold_scale_and_bn`, because it is what
//!    makes a binary layer and the sign after a max-pool adjacent: it turns
//!    `sign(maxpool(x))`, `threshold(maxpool(x))` and
//!    `sign(batchnorm(maxpool(x)))` into `maxpool(threshold(x))`. The other
//!    order would fold the layer into an `affine` output first (approximate,
//!    f32) and lose the exact bit fusion.
//! 4. `fold_scale_and_bn` folds the scale, batchnorm and sign after every
//!    binary layer into `output=threshold` (exact) or `output=affine`.
//! 5. `pack_weights` after the folds: only a layer whose scale has been folded
//!    away (`scale=none`) can drop its latent weights.
//! 6. `eliminate_dead_nodes` last among the rewrites: it removes what the
//!    folds left unused and renumbers densely.
//! 7. `plan_memory` on the final graph: it changes nothing and measures the
//!    activation arena the graph needs.
//!
//! `select_cells` is not in the default pipeline: it changes what the model
//! computes (a searched supernet becomes one architecture). Name it
//! (`--passes select_cells,default`) to run it, first.
//!
//! Every pass in `default` preserves the model's outputs: exactly for bit
//! values (thresholds are found by evaluating the interpreter's own f32
//! formulas), and up to f32 rounding where real arithmetic is refolded
//! (`fold_batchnorm`, `output=affine`).

pub mod binary_maxpool;
pub mod differentiate;
pub mod eliminate_dead_nodes;
pub mod eliminate_identity;
pub mod fold_batchnorm;
pub mod fold_projection;
pub mod fold_scale_and_bn;
pub mod pack_weights;
pub mod patch;
pub mod plan_memory;
pub mod report;
pub mod select_cells;
pub mod step;

use std::collections::BTreeMap;

use crate::ir::graph::Graph;
use crate::ir::params::{Params, ParamsError, Tensor};
use crate::ir::verify::{VerifyError, verify};

pub use patch::{Patch, PatchError};
pub use plan_memory::MemoryPlan;
pub use report::PassReport;

/// Whether a pass changed the graph or its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Nothing changed.
    No,
    /// Something changed.
    Yes,
}

impl Changed {
    /// `Yes` if `b`.
    pub fn from(b: bool) -> Changed {
        if b { Changed::Yes } else { Changed::No }
    }
}

/// Why a pass or the pass manager failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PassError {
    /// A pass name that is not in the pipeline table.
    #[error("unknown pass `{name}`{}; the passes are: {}", suggest(.suggestion), names())]
    UnknownPass {
        /// The name given.
        name: String,
        /// The closest known name, if any is close.
        suggestion: Option<&'static str>,
    },
    /// An empty item in a pass list (`a,,b`).
    #[error("empty pass name in `{0}`")]
    EmptyName(String),
    /// The passes rewrite models, not training graphs.
    #[error("`{node}` (`{op}`) belongs to a training graph; the passes run on the model itself")]
    TrainingGraph {
        /// The first training node found.
        node: String,
        /// Its op.
        op: &'static str,
    },
    /// The graph does not verify before the passes run.
    #[error("the model is invalid: {0}")]
    InvalidInput(Box<VerifyError>),
    /// The parameters do not match the graph before the passes run.
    #[error("{0}")]
    InputParams(Box<ParamsError>),
    /// A pass made a graph that does not verify: a bug in the pass.
    #[error("pass `{pass}` produced an invalid graph: {error}")]
    Verify {
        /// The pass.
        pass: &'static str,
        /// What is wrong.
        error: Box<VerifyError>,
    },
    /// A pass left parameters that do not match its graph: a bug in the pass.
    #[error("pass `{pass}` left parameters that do not match the graph: {error}")]
    Params {
        /// The pass.
        pass: &'static str,
        /// What is wrong.
        error: Box<ParamsError>,
    },
    /// A patch could not be applied: a bug in the pass.
    #[error("pass `{pass}`: {error}")]
    Patch {
        /// The pass.
        pass: &'static str,
        /// Why.
        error: Box<PatchError>,
    },
    /// An explicit `select_cells` choice that does not fit its choose.
    #[error(
        "select_cells: the choice {keep:?} for `{choose}` is not a sorted list of distinct alternatives below {alternatives}"
    )]
    BadChoice {
        /// The choose.
        choose: String,
        /// The alternatives asked for.
        keep: Vec<usize>,
        /// How many the choose has.
        alternatives: usize,
    },
    /// A parameter a pass reads is missing or misshapen.
    #[error("pass `{pass}`: parameter `{name}` is missing or misshapen")]
    MissingParam {
        /// The pass.
        pass: &'static str,
        /// The parameter.
        name: String,
    },
}

fn suggest(s: &Option<&'static str>) -> String {
    s.map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

fn names() -> String {
    let mut v: Vec<&str> = PIPELINE.iter().map(|p| p.name).collect();
    v.push("default");
    v.push("none");
    v.join(", ")
}

/// Options of the passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassOptions {
    /// `select_cells`: how many alternatives each `choose` keeps (the `k`
    /// with the largest α). 1 replaces every `choose` by its best alternative.
    pub top_k: usize,
    /// `select_cells`: explicit choices by `choose` name, overriding `top_k`
    /// for the chooses they name (an architecture search's genotype).
    pub choices: BTreeMap<String, CellChoice>,
}

/// What `select_cells` keeps of one `choose` named in
/// [`PassOptions::choices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellChoice {
    /// The alternatives kept, by index (sorted, distinct, at least one).
    pub keep: Vec<usize>,
    /// What the choose becomes.
    pub form: ChoiceForm,
}

/// What a `choose` becomes in `select_cells` under a [`CellChoice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceForm {
    /// The sum of the kept alternatives: `add` of them, or the alternative
    /// itself when one is kept (a searched node summing its chosen edges, an
    /// edge reduced to its operation).
    Sum,
    /// A smaller `choose` over the kept alternatives with their entries of
    /// `NAME.alpha`, even of one (a supernet with operations dropped).
    Choose,
}

impl Default for PassOptions {
    fn default() -> PassOptions {
        PassOptions {
            top_k: 1,
            choices: BTreeMap::new(),
        }
    }
}

/// What the passes did, by node name: what each node absorbed, and why a
/// pattern did not fire at a node. [`PassReport`] renders it. Entries follow
/// the nodes a patch renames ([`PassCx::apply`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassLog {
    /// Node name → the ops fused into it, as `op `name`` in fusion order.
    pub fused: BTreeMap<String, Vec<String>>,
    /// Node name → why a fusion did not happen there (latest note per pass).
    pub notes: BTreeMap<String, BTreeMap<&'static str, String>>,
    /// The memory plan of the last `plan_memory` run.
    pub memory: Option<MemoryPlan>,
}

/// The context a pass runs in: the parameters it rewrites along with the
/// graph, the options, and the log it reports to.
pub struct PassCx<'a> {
    /// The parameters (values for every node of the graph).
    pub params: &'a mut Params,
    /// The options.
    pub options: &'a PassOptions,
    /// What the passes did so far.
    pub log: &'a mut PassLog,
    /// The running pass's name (for notes and errors).
    pub pass: &'static str,
}

impl PassCx<'_> {
    /// The values of parameter `name`, checked to hold `len` elements.
    pub fn param(&self, name: &str, len: usize) -> Result<&[f32], PassError> {
        match self.params.tensors.get(name) {
            Some(t) if t.data.len() == len => Ok(&t.data),
            _ => Err(PassError::MissingParam {
                pass: self.pass,
                name: name.to_string(),
            }),
        }
    }

    /// Sets parameter `name` (shape `[len]` unless `shape` is given).
    pub fn set_param(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        self.params.tensors.insert(name, Tensor { shape, data });
    }

    /// Records that `node` absorbed `what` (an op description), and whatever
    /// `absorbed` had absorbed before.
    pub fn fused(&mut self, node: &str, what: String, absorbed: &str) {
        let earlier = self.log.fused.remove(absorbed).unwrap_or_default();
        let list = self.log.fused.entry(node.to_string()).or_default();
        list.extend(earlier);
        list.push(what);
    }

    /// Records why a fusion did not happen at `node`.
    pub fn note(&mut self, node: &str, why: String) {
        self.log
            .notes
            .entry(node.to_string())
            .or_default()
            .insert(self.pass, why);
    }

    /// Forgets the notes this pass made at `node` (it fired there after all).
    pub fn clear_note(&mut self, node: &str) {
        if let Some(n) = self.log.notes.get_mut(node) {
            n.remove(self.pass);
        }
    }

    /// Applies a patch, mapping its error to this pass. The log follows the
    /// nodes the patch renames: what the node fused and the notes at it move
    /// to its new name, replacing those of the absorbed output that had it.
    pub fn apply(&mut self, patch: Patch, graph: &mut Graph) -> Result<(), PassError> {
        let renamed = patch
            .apply(graph, self.params)
            .map_err(|error| PassError::Patch {
                pass: self.pass,
                error: Box::new(error),
            })?;
        for (old, new) in renamed {
            self.log.notes.remove(&new);
            if let Some(n) = self.log.notes.remove(&old) {
                self.log.notes.insert(new.clone(), n);
            }
            let fused = self.log.fused.remove(&old);
            let earlier = self.log.fused.remove(&new);
            if let Some(f) = fused.or(earlier) {
                self.log.fused.insert(new, f);
            }
        }
        Ok(())
    }
}

/// A pass's entry point.
pub type RunFn = fn(&mut Graph, &mut PassCx) -> Result<Changed, PassError>;

/// One entry of the pipeline table.
#[derive(Clone, Copy, Debug)]
pub struct PassInfo {
    /// The name `--passes` and `--print-after` use.
    pub name: &'static str,
    /// The entry point.
    pub run: RunFn,
    /// Whether the pass is in the `default` pipeline.
    pub default: bool,
    /// What it does, in one line.
    pub doc: &'static str,
}

/// Every pass, in the default pipeline's order (see the module doc for why).
pub const PIPELINE: &[PassInfo] = &[
    PassInfo {
        name: "select_cells",
        run: select_cells::run,
        default: false,
        doc: "replace every `choose` by its alternative(s) with the largest α (changes the model)",
    },
    PassInfo {
        name: "fold_projection",
        run: fold_projection::run,
        default: true,
        doc: "fold PCNN's learned projection into the latent binary weights",
    },
    PassInfo {
        name: "eliminate_identity",
        run: eliminate_identity::run,
        default: true,
        doc: "remove `identity` nodes",
    },
    PassInfo {
        name: "fold_batchnorm",
        run: fold_batchnorm::run,
        default: true,
        doc: "fold batchnorm into the conv2d/dense before it; a lone batchnorm becomes `affine`",
    },
    PassInfo {
        name: "binary_maxpool",
        run: binary_maxpool::run,
        default: true,
        doc: "move sign/threshold before a maxpool, so the max-pool works on bits",
    },
    PassInfo {
        name: "fold_scale_and_bn",
        run: fold_scale_and_bn::run,
        default: true,
        doc: "fold α, batchnorm and sign after a binary layer into integer thresholds or an affine epilogue",
    },
    PassInfo {
        name: "pack_weights",
        run: pack_weights::run,
        default: true,
        doc: "store binary weights as packed bits",
    },
    PassInfo {
        name: "eliminate_dead_nodes",
        run: eliminate_dead_nodes::run,
        default: true,
        doc: "remove nodes no output depends on; renumber densely",
    },
    PassInfo {
        name: "plan_memory",
        run: plan_memory::run,
        default: true,
        doc: "assign activations to reusable arena slots; report peak activation memory",
    },
];

/// The pass called `name`.
pub fn pass(name: &str) -> Option<&'static PassInfo> {
    PIPELINE.iter().find(|p| p.name == name)
}

/// Which passes to run, in order: `default`, `none`, or a comma-separated
/// list of names in which `default` stands for the default pipeline
/// (`select_cells,default`).
#[derive(Clone, Debug)]
pub struct PassSelection {
    passes: Vec<&'static PassInfo>,
}

impl PassSelection {
    /// The default pipeline.
    pub fn default_pipeline() -> PassSelection {
        PassSelection {
            passes: PIPELINE.iter().filter(|p| p.default).collect(),
        }
    }

    /// No pass.
    pub fn none() -> PassSelection {
        PassSelection { passes: Vec::new() }
    }

    /// Parses `default`, `none` or `name,name,...`.
    pub fn parse(text: &str) -> Result<PassSelection, PassError> {
        let text = text.trim();
        if text == "none" {
            return Ok(PassSelection::none());
        }
        let mut passes = Vec::new();
        for item in text.split(',').map(str::trim) {
            match item {
                "" => return Err(PassError::EmptyName(text.to_string())),
                "default" => passes.extend(PIPELINE.iter().filter(|p| p.default)),
                name => passes.push(pass(name).ok_or_else(|| PassError::UnknownPass {
                    name: name.to_string(),
                    suggestion: closest(name),
                })?),
            }
        }
        Ok(PassSelection { passes })
    }

    /// The passes, in the order they run.
    pub fn passes(&self) -> impl Iterator<Item = &'static PassInfo> + '_ {
        self.passes.iter().copied()
    }

    /// Their names.
    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name).collect()
    }
}

impl PartialEq for PassSelection {
    fn eq(&self, other: &PassSelection) -> bool {
        self.names() == other.names()
    }
}

impl std::str::FromStr for PassSelection {
    type Err = PassError;
    fn from_str(s: &str) -> Result<PassSelection, PassError> {
        PassSelection::parse(s)
    }
}

/// The known name closest to `name`: a likely typo, or a prefix.
fn closest(name: &str) -> Option<&'static str> {
    let candidates = || PIPELINE.iter().map(|p| p.name).chain(["default", "none"]);
    crate::util::closest(name, candidates())
        .or_else(|| candidates().find(|c| !name.is_empty() && c.starts_with(name)))
}

/// Runs the selected passes on `graph` and `params`, in order.
///
/// Before the first pass, the graph is verified and the parameters checked
/// against it ([`Params::check`]). After every pass the graph is verified
/// again and the parameters re-checked, so a faulty pass is caught at once
/// and named; then `print_after(pass_name, graph)` is called (the CLI's
/// `--print-after`). Returns the report of what the passes did, with the
/// totals of the final graph.
pub fn optimize(
    graph: &mut Graph,
    params: &mut Params,
    selection: &PassSelection,
    options: &PassOptions,
    mut print_after: impl FnMut(&str, &Graph),
) -> Result<PassReport, PassError> {
    verify(graph).map_err(|e| PassError::InvalidInput(Box::new(e)))?;
    if let Some(id) = graph.node_ids().find(|&id| graph.node(id).op.is_training()) {
        let node = graph.node(id);
        return Err(PassError::TrainingGraph {
            node: node.name.clone(),
            op: node.op.name(),
        });
    }
    params
        .check(graph)
        .map_err(|e| PassError::InputParams(Box::new(e)))?;
    let mut log = PassLog::default();
    let mut ran = Vec::new();
    for info in selection.passes() {
        let mut cx = PassCx {
            params,
            options,
            log: &mut log,
            pass: info.name,
        };
        let changed = (info.run)(graph, &mut cx)?;
        verify(graph).map_err(|e| PassError::Verify {
            pass: info.name,
            error: Box::new(e),
        })?;
        params.check(graph).map_err(|e| PassError::Params {
            pass: info.name,
            error: Box::new(e),
        })?;
        print_after(info.name, graph);
        ran.push((info.name, changed));
    }
    Ok(PassReport::new(graph, &log, ran))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse() {
        assert_eq!(
            PassSelection::parse("none").unwrap().names(),
            Vec::<&str>::new()
        );
        let d = PassSelection::parse("default").unwrap().names();
        assert_eq!(d.first(), Some(&"fold_projection"));
        assert!(!d.contains(&"select_cells"));
        let s = PassSelection::parse("select_cells, default")
            .unwrap()
            .names();
        assert_eq!(s[0], "select_cells");
        assert_eq!(s.len(), d.len() + 1);
        let e = PassSelection::parse("fold_batchnrom").unwrap_err();
        assert_eq!(
            e,
            PassError::UnknownPass {
                name: "fold_batchnrom".into(),
                suggestion: Some("fold_batchnorm"),
            }
        );
        assert!(e.to_string().contains("did you mean `fold_batchnorm`?"));
        assert!(matches!(
            PassSelection::parse("xyzzy"),
            Err(PassError::UnknownPass {
                suggestion: None,
                ..
            })
        ));
        assert!(matches!(
            PassSelection::parse("default,,plan_memory"),
            Err(PassError::EmptyName(_))
        ));
    }
}
