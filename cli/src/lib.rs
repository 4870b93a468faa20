//! The `clustermesh` command's library: the commands and their output.

pub mod cmd;
pub mod output;
