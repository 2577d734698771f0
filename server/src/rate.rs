//! Rate limits: how many commands a socket, and a user across all their sockets and
//! HTTP requests on this node, may send per second.
//!
//! Generic cell rate limiting (the `governor` crate): each limit allows a burst of twice
//! its rate, then its rate. A command over the limit is answered `rate_limited` and does
//! nothing; the connection stays open. `ping` is never limited, so a throttled client can
//! still tell it is alive.

use std::num::NonZeroU32;

use backchannel_protocol::UserId;
use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Limits;
use crate::error::ServiceError;

/// A socket's own limiter.
pub struct ConnectionRate(DefaultDirectRateLimiter);

pub struct RateLimits {
    per_connection: Quota,
    /// Shared by every socket's limiter: making a clock runs CPUID (a VM exit on most
    /// clouds), which was ~6 % of a node's CPU while 10,000 sockets connected.
    clock: DefaultClock,
    per_user: DefaultKeyedRateLimiter<UserId>,
    connection_rate: u32,
    user_rate: u32,
}

fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_second.max(1).saturating_mul(2)).unwrap_or(rate);
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    pub fn new(limits: &Limits) -> RateLimits {
        RateLimits {
            per_connection: quota(limits.commands_per_second),
            clock: DefaultClock::default(),
            per_user: RateLimiter::keyed(quota(limits.user_commands_per_second)),
            connection_rate: limits.commands_per_second,
            user_rate: limits.user_commands_per_second,
        }
    }

    pub fn connection(&self) -> ConnectionRate {
        ConnectionRate(RateLimiter::direct_with_clock(
            self.per_connection,
            self.clock.clone(),
        ))
    }

    /// One command on `connection` by `user`.
    pub fn check(&self, connection: &ConnectionRate, user: &UserId) -> Result<(), ServiceError> {
        if connection.0.check().is_err() {
            return Err(ServiceError::RateLimited(format!(
                "more than {} commands per second on this socket; slow down",
                self.connection_rate
            )));
        }
        self.check_user(user)
    }

    /// One command (socket or HTTP) by `user`.
    pub fn check_user(&self, user: &UserId) -> Result<(), ServiceError> {
        if self.per_user.check_key(user).is_err() {
            return Err(ServiceError::RateLimited(format!(
                "more than {} commands per second from this user; slow down",
                self.user_rate
            )));
        }
        Ok(())
    }

    /// Forgets users whose limit has fully recovered, so the map does not grow forever.
    pub fn forget_idle(&self) {
        self.per_user.retain_recent();
        self.per_user.shrink_to_fit();
    }
}
