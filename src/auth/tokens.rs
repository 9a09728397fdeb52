//! etcd's `simple` tokens: an opaque string (16 random letters, a dot and the raft index of the
//! Authenticate entry that issued it, e.g. `sssvIpwfnLAcWAQH.9`) that names a user. Each member
//! keeps its tokens in memory; a token expires `ttl` after its last use, as with etcd's
//! `--auth-token-ttl`, and a user's tokens go when the user is deleted or changes password.
//! Unlike a JWT, a simple token carries no auth revision: a request made with one is checked
//! against the auth store as it is when the request arrives (as in etcd).
//!
//! The letters are drawn by the member that proposes the Authenticate entry and every member
//! assigns the same token when it applies it, so a client may present its token to any member.
//! Time is passed in, so expiry is tested without waiting.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng as _;

/// Letters in a token before the dot.
const TOKEN_LETTERS: usize = 16;

/// Tokens kept before expired ones are swept (then twice the live count, at least this).
const SWEEP_AT_LEAST: usize = 1024;

/// Why a token was refused; both read as etcd's `invalid auth token`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown token")]
    Unknown,
    #[error("expired token")]
    Expired,
}

#[derive(Debug)]
struct Issued {
    user: String,
    expires: Instant,
}

#[derive(Debug)]
struct Tokens {
    by_token: HashMap<String, Issued>,
    sweep_at: usize,
}

/// The simple tokens this member knows.
#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<Tokens>,
}

/// The random part of a new token, drawn by the member that proposes the Authenticate entry.
pub fn token_letters() -> String {
    let mut rng = rand::rng();
    (0..TOKEN_LETTERS)
        .map(|_| {
            let n = rng.random_range(0..52u8);
            char::from(if n < 26 { b'a' + n } else { b'A' + n - 26 })
        })
        .collect()
}

/// The token an Authenticate entry at raft `index` assigns: `<letters>.<index>`.
pub fn token(letters: &str, index: u64) -> String {
    format!("{letters}.{index}")
}

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

impl Default for SimpleTokens {
    fn default() -> SimpleTokens {
        SimpleTokens::new(DEFAULT_TOKEN_TTL)
    }
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: Mutex::new(Tokens {
                by_token: HashMap::new(),
                sweep_at: SWEEP_AT_LEAST,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `token` as `user`'s.
    pub fn assign(&self, token: &str, user: &str, now: Instant) {
        let mut tokens = self.lock();
        if tokens.by_token.len() >= tokens.sweep_at {
            tokens.by_token.retain(|_, issued| issued.expires > now);
            tokens.sweep_at = SWEEP_AT_LEAST.max(2 * tokens.by_token.len());
        }
        tokens.by_token.insert(
            token.to_owned(),
            Issued {
                user: user.to_owned(),
                expires: now + self.ttl,
            },
        );
    }

    /// The user `token` was issued for; using it extends its life by the TTL.
    pub fn check(&self, token: &str, now: Instant) -> Result<String, TokenError> {
        let mut tokens = self.lock();
        let Some(issued) = tokens.by_token.get_mut(token) else {
            return Err(TokenError::Unknown);
        };
        if issued.expires <= now {
            tokens.by_token.remove(token);
            return Err(TokenError::Expired);
        }
        issued.expires = now + self.ttl;
        Ok(issued.user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.lock().by_token.retain(|_, issued| issued.user != user);
    }

    /// Tokens held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.lock().by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn tokens_look_like_etcds() {
        let letters = token_letters();
        assert_eq!(letters.len(), TOKEN_LETTERS);
        assert!(
            letters.chars().all(|c| c.is_ascii_alphabetic()),
            "{letters}"
        );
        assert_ne!(token_letters(), letters, "tokens are random");
        assert_eq!(token(&letters, 9), format!("{letters}.9"));
    }

    #[test]
    fn a_token_names_its_user_until_it_expires() {
        let tokens = SimpleTokens::new(TTL);
        let t0 = Instant::now();
        tokens.assign("abc.1", "alice", t0);
        assert_eq!(tokens.check("abc.1", t0 + TTL / 2), Ok("alice".into()));
        assert_eq!(tokens.check("nope.1", t0), Err(TokenError::Unknown));
        // The use at TTL/2 extended it to 1.5 TTL.
        assert!(tokens.check("abc.1", t0 + TTL + TTL / 4).is_ok());
        let idle_from = t0 + TTL + TTL / 4;
        assert_eq!(
            tokens.check("abc.1", idle_from + TTL),
            Err(TokenError::Expired)
        );
        assert_eq!(tokens.check("abc.1", idle_from), Err(TokenError::Unknown));
    }

    #[test]
    fn a_users_tokens_go_with_it() {
        let tokens = SimpleTokens::new(TTL);
        let now = Instant::now();
        tokens.assign("a.1", "alice", now);
        tokens.assign("a.2", "alice", now);
        tokens.assign("b.3", "bob", now);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.check("a.1", now), Err(TokenError::Unknown));
        assert_eq!(tokens.check("a.2", now), Err(TokenError::Unknown));
        assert!(tokens.check("b.3", now).is_ok());
    }

    #[test]
    fn expired_tokens_are_swept_so_memory_stays_bounded() {
        let tokens = SimpleTokens::new(TTL);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT_LEAST {
            tokens.assign(&format!("old.{i}"), "alice", t0);
        }
        assert_eq!(tokens.len(), SWEEP_AT_LEAST);
        // All of those have expired by now; the next assignment sweeps them.
        tokens.assign("new.1", "alice", t0 + TTL * 2);
        assert_eq!(tokens.len(), 1);
        assert!(tokens.check("new.1", t0 + TTL * 2).is_ok());
    }
}
