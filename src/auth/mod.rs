//! etcd's role-based access control, as a state machine beside `lease` and `alarm`.
//!
//! So far: [`perms`], which decides whether a user's roles grant read or write access to a key
//! or key range, the check every KV, Watch and Lease RPC makes once auth is enabled. The user and
//! role store, tokens and the Auth service build on it (issue 11).

pub mod perms;

pub use perms::{Access, KeyPermissions};
