//! Measuring rewrites: text metrics ([`metrics`]) and the rewrite evaluation that
//! compares single-pass, self-refine and debate over a corpus ([`rewrite`]).

pub mod ethics;
pub mod metrics;
pub mod rewrite;
