//! misc
use super::CmdResult;
pub fn operation(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
pub fn monitor(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
pub fn version(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
pub fn storage(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
pub fn network(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
