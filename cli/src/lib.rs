//! The `clustermesh` command's library: the command line, the contexts
//! file, the commands and their output.

pub mod args;
pub mod cmd;
pub mod config;
pub mod output;
pub mod progress;
pub mod run;
