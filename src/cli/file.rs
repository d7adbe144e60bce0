//! file
use super::CmdResult;
pub fn run(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
