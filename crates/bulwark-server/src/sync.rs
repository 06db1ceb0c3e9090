//! Lock poisoning, handled once for the server. A panic while a lock is held (which library
//! code never does on purpose) poisons it; every value behind the server's locks (counters,
//! maps, queues, the current store) stays consistent through such a panic because each update
//! is one step, so the lock is taken as it is: refusing every login, skipping every check or
//! dropping every output from then on would each be worse.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, also after a panic elsewhere poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `lock`, also after a panic elsewhere poisoned it.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, also after a panic elsewhere poisoned it.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
