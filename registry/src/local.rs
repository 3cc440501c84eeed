//! The local tier (SPEC 7): names that live on one node only, like Erlang's `register/2`.
//!
//! Role: [`LocalTable`] maps a name to a process of this node, and a process to its names so its
//! exit removes them all. It is a plain, I/O-free table; [`crate::Registry`] owns it behind a lock,
//! checks that the pid is hosted (`NotHosted`) and wires the exit hook.
//!
//! Invariants: first wins (a held name is refused with `AlreadyRegistered`, naming the holder);
//! the two maps always agree; a pid holds at most [`MAX_NAMES_PER_PID`] names and the table at
//! most [`MAX_LOCAL_NAMES`], refused with `TooManyNames` beyond.

use std::collections::HashMap;

use cohort_actors::Pid;

use crate::RegistryError;
use crate::eventual::crdt::validate_name;

/// Most names in one node's local tier.
///
/// Why: the local tier is a per-node service directory (Erlang's registered names default to a
/// few thousand in practice); 65,536 bounds its memory at a few MiB.
pub const MAX_LOCAL_NAMES: usize = 65_536;

/// Most names one process holds in one tier.
///
/// Why: a process registers under a handful of aliases; the bound keeps one process's exit
/// cleanup (which runs on the exit pipeline) short.
pub const MAX_NAMES_PER_PID: usize = 64;

/// One node's local names.
#[derive(Debug, Default)]
pub struct LocalTable {
    names: HashMap<Box<str>, Pid>,
    by_pid: HashMap<Pid, Vec<Box<str>>>,
}

impl LocalTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `pid` under `name`; first wins. Registering the same pid again is a no-op.
    /// The caller has checked that `pid` is a live process of this node.
    pub fn register(&mut self, name: &str, pid: &Pid) -> Result<(), RegistryError> {
        validate_name(name).map_err(|error| RegistryError::InvalidName { reason: error.to_string() })?;
        if let Some(holder) = self.names.get(name) {
            if holder == pid {
                return Ok(());
            }
            return Err(RegistryError::AlreadyRegistered { tier: crate::Tier::Local, pid: holder.clone() });
        }
        if self.names.len() >= MAX_LOCAL_NAMES {
            return Err(RegistryError::TooManyNames { tier: crate::Tier::Local, max: MAX_LOCAL_NAMES });
        }
        let held = self.by_pid.get(pid).map_or(0, Vec::len);
        if held >= MAX_NAMES_PER_PID {
            return Err(RegistryError::TooManyNames { tier: crate::Tier::Local, max: MAX_NAMES_PER_PID });
        }
        let name: Box<str> = name.into();
        self.names.insert(name.clone(), pid.clone());
        self.by_pid.entry(pid.clone()).or_default().push(name);
        Ok(())
    }

    /// Removes `name`; returns the pid that held it.
    pub fn unregister(&mut self, name: &str) -> Option<Pid> {
        let pid = self.names.remove(name)?;
        if let Some(names) = self.by_pid.get_mut(&pid) {
            names.retain(|held| &**held != name);
            if names.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
        Some(pid)
    }

    /// Removes every name of `pid` (it exited); returns them.
    pub fn remove_pid(&mut self, pid: &Pid) -> Vec<Box<str>> {
        let names = self.by_pid.remove(pid).unwrap_or_default();
        for name in &names {
            self.names.remove(name);
        }
        names
    }

    /// The process holding `name`.
    pub fn lookup(&self, name: &str) -> Option<&Pid> {
        self.names.get(name)
    }

    /// Every (name, pid), sorted by name.
    pub fn list(&self) -> Vec<(String, Pid)> {
        let mut all: Vec<(String, Pid)> = self.names.iter().map(|(n, p)| (n.to_string(), p.clone())).collect();
        all.sort();
        all
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_cluster::NodeId;

    fn pid(n: u64) -> Pid {
        Pid::new(NodeId::new("a", 1), n)
    }

    #[test]
    fn first_registration_wins_and_names_the_holder() {
        let mut table = LocalTable::new();
        table.register("db", &pid(1)).unwrap();
        table.register("db", &pid(1)).unwrap();
        let error = table.register("db", &pid(2)).unwrap_err();
        assert_eq!(error, RegistryError::AlreadyRegistered { tier: crate::Tier::Local, pid: pid(1) });
        assert_eq!(table.lookup("db"), Some(&pid(1)));
    }

    #[test]
    fn exit_removes_every_name_of_the_pid_and_only_those() {
        let mut table = LocalTable::new();
        table.register("a", &pid(1)).unwrap();
        table.register("b", &pid(1)).unwrap();
        table.register("c", &pid(2)).unwrap();
        let mut removed = table.remove_pid(&pid(1));
        removed.sort();
        assert_eq!(removed, vec!["a".into(), "b".into()]);
        assert_eq!(table.list(), vec![("c".to_owned(), pid(2))]);
        assert!(table.remove_pid(&pid(1)).is_empty());
    }

    #[test]
    fn unregister_frees_the_name_for_another_pid() {
        let mut table = LocalTable::new();
        table.register("a", &pid(1)).unwrap();
        assert_eq!(table.unregister("a"), Some(pid(1)));
        assert_eq!(table.unregister("a"), None);
        table.register("a", &pid(2)).unwrap();
        assert!(table.remove_pid(&pid(1)).is_empty());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn bounds_are_refused_with_a_typed_error() {
        let mut table = LocalTable::new();
        for i in 0..MAX_NAMES_PER_PID {
            table.register(&format!("n{i}"), &pid(1)).unwrap();
        }
        assert!(matches!(table.register("one-more", &pid(1)), Err(RegistryError::TooManyNames { .. })));
        assert!(matches!(table.register("", &pid(2)), Err(RegistryError::InvalidName { .. })));
        assert!(matches!(table.register(&"x".repeat(300), &pid(2)), Err(RegistryError::InvalidName { .. })));
    }
}
