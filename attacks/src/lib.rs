//! protbench attacks. The plug-in contract and the registry arrive with the matrix runner (issue 4);
//! until then this crate only reserves its place in the workspace.
#![warn(missing_docs)]
