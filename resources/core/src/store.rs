//! A kind's own corner of the node's store: keys and values that only that kind reads and writes (a USB kind's
//! claimed devices, a compute kind's containers). The node keeps it in its redb file under the kind's name, so it
//! survives restarts and `kill -9` like everything else the node acknowledged.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::Error;

/// Durable key-value storage for one kind.
pub trait KindStore: Send + Sync {
    /// The value stored under `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Stores `value` under `key`, durably, replacing any value.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), Error>;
    /// Removes `key`; returns whether it was there.
    fn remove(&self, key: &str) -> Result<bool, Error>;
    /// Every key and value, in key order.
    fn list(&self) -> Result<Vec<(String, Vec<u8>)>, Error>;
}

/// A [`KindStore`] in memory (unit tests of kinds).
#[derive(Debug, Default)]
pub struct MemStore(Mutex<BTreeMap<String, Vec<u8>>>);

impl KindStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.0.lock().expect("mem store lock").get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.0.lock().expect("mem store lock").insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<bool, Error> {
        Ok(self.0.lock().expect("mem store lock").remove(key).is_some())
    }

    fn list(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        Ok(self.0.lock().expect("mem store lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}
