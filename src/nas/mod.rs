//! Architecture search: a supernet written in the model language (`cell`,
//! `choose`) trained on the compiled training step, and discretised to an
//! ordinary model. The semantics are in `ir-spec/search.md`.
//!
//! - [`space`]: which `choose`s are edges (α) and which are searched nodes
//!   (β), and the architecture parameters;
//! - [`search`]: the first-order DARTS / PC-DARTS alternation over the two
//!   halves of the training data, checkpointable;
//! - [`reduction`]: BNAS's operation-space reduction;
//! - [`parent`] and [`child_parent`]: CP-NAS's full-precision parent and
//!   its child-parent scoring;
//! - [`genotype`]: the chosen operation per edge and edges per node, and the
//!   discretisation through `select_cells`;
//! - [`plot`]: α per edge over epochs.

pub mod child_parent;
pub mod genotype;
pub mod parent;
pub mod plot;
pub mod reduction;
pub mod search;
pub mod space;
