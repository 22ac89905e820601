/*!
Fair shares of the decode turns: no user, and no client of a user, takes more than its share of
the cores while others wait.

Every producer has its own worker threads, so without a rule the kernel shares the cores among
threads: a user with fourteen producers gets fourteen times the cores of a user with one (the
attack drill measured a well-behaved trainer at 0.065× its calm rate). Here the daemon holds
`turns` decode turns (one per core by default) and a worker takes one before each image.

Who gets a turn that comes free while workers wait is decided by service over time, not by who
holds turns at that instant: every user counts the turns (images) it has been given, and the
waiting user with the fewest goes first; among that user's producers, the one with the fewest;
then the one served longest ago. Counting at the instant fails where it matters most: with one
turn, the user handing it back holds none at the moment it is handed over, every user ties at
zero, and turns went round the *producers* (a user with twelve rings took 12/13). Counted over
time, two users that both want more than an equal share get it whatever their producer and
thread counts; a user who wants less gets all it wants. A user (or producer) that was idle
joins at the highest count reached (a virtual time, as in start-time fair queueing), so a
pause banks no credit to flood the others with later, and a user arriving after another ran
alone for hours does not take every turn until its count catches up: max-min fairness, user
first, then producer.

A turn is held for one image (a few milliseconds), so a new client waits at most that long for
its first one.
*/

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::batches::batch::Gate;

/// How often a waiting worker looks whether its client has gone.
const RECHECK: Duration = Duration::from_millis(20);

/// The daemon's decode turns and who holds and waits for them.
pub(super) struct Shares {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Turns nobody holds.
    free: usize,
    /// Each user's turns given, from the count it joined at, and when it was last served.
    users: HashMap<u32, UserShare>,
    tenants: HashMap<u64, Tenancy>,
    /// Counts hand-overs, for "served longest ago".
    clock: u64,
    /// The highest count a user has reached: where a user that wakes up joins.
    now: u64,
}

/// One user's part of the state.
#[derive(Default, Clone, Copy)]
struct UserShare {
    /// Turns given to its producers, from the count it joined at.
    given: u64,
    /// When one of its producers was last handed a turn.
    served: u64,
    /// The highest count one of its producers has reached: where a producer of this user
    /// that wakes up joins.
    now: u64,
}

/// One producer's part of the state.
struct Tenancy {
    uid: u32,
    /// Turns its workers hold (those granted but not yet picked up included).
    running: usize,
    /// Its workers waiting for a turn.
    waiting: usize,
    /// Turns handed to it that a waiting worker has not picked up yet (≤ `waiting`).
    granted: usize,
    /// Turns it has been given, from the count it joined at.
    given: u64,
    /// When it was last handed a turn.
    served: u64,
    wake: Arc<Condvar>,
}

impl Tenancy {
    /// Whether it holds or wants a turn.
    fn active(&self) -> bool {
        self.running > 0 || self.waiting > 0
    }
}

impl Shares {
    /// `turns` decode turns (at least one).
    pub(super) fn new(turns: usize) -> Arc<Shares> {
        Arc::new(Shares {
            state: Mutex::new(State {
                free: turns.max(1),
                ..State::default()
            }),
        })
    }

    /// A producer of user `uid`, known as `id` (its first client's connection id).
    pub(super) fn tenant(self: &Arc<Shares>, id: u64, uid: u32) -> Tenant {
        if let Ok(mut s) = self.state.lock() {
            s.users.entry(uid).or_default();
            s.tenants.insert(
                id,
                Tenancy {
                    uid,
                    running: 0,
                    waiting: 0,
                    granted: 0,
                    given: 0,
                    served: 0,
                    wake: Arc::new(Condvar::new()),
                },
            );
        }
        Tenant {
            shares: Arc::clone(self),
            id,
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, State>> {
        // A poisoned lock means a worker panicked while holding it; its producer is gone and
        // the others go on without shares rather than stop.
        self.state.lock().ok()
    }
}

impl State {
    /// Producer `id` is about to hold or want a turn: if it (or its user) was idle, it joins
    /// at the count of the user (or the user's producer) served last, so an idle spell banks
    /// no credit, and a user arriving after another has run alone for hours does not take
    /// every turn until its count catches up.
    fn wake_up(&mut self, id: u64) {
        let Some(t) = self.tenants.get(&id) else {
            return;
        };
        if t.active() {
            return;
        }
        let uid = t.uid;
        let user_active = self.tenants.values().any(|o| o.uid == uid && o.active());
        let now = self.now;
        let user = self.users.entry(uid).or_default();
        if !user_active {
            user.given = user.given.max(now);
        }
        let user_now = user.now;
        if let Some(t) = self.tenants.get_mut(&id) {
            t.given = t.given.max(user_now);
        }
    }

    /// Producer `id` starts a turn (taken free, kept, or handed to it).
    fn start(&mut self, id: u64) {
        if let Some(t) = self.tenants.get_mut(&id) {
            t.running += 1;
        }
        self.count(id);
    }

    /// Producer `id` keeps the turn it holds for its next image.
    fn keep(&mut self, id: u64) {
        self.count(id);
    }

    /// One more image given to producer `id` and its user; the counts it reaches are the
    /// virtual times those who wake up join at.
    fn count(&mut self, id: u64) {
        let Some(t) = self.tenants.get_mut(&id) else {
            return;
        };
        t.given += 1;
        let (uid, given) = (t.uid, t.given);
        let user = self.users.entry(uid).or_default();
        user.given += 1;
        user.now = user.now.max(given);
        self.now = self.now.max(user.given);
    }

    /// Counts one more worker of producer `id` waiting; `false` if it is not here.
    fn wait_for(&mut self, id: u64) -> bool {
        self.wake_up(id);
        self.tenants.get_mut(&id).map(|t| t.waiting += 1).is_some()
    }

    /// Hands one turn to the waiting producer with the least share, or frees it: the user
    /// given the fewest turns (on a tie, the one served longest ago), then that user's
    /// producer given the fewest (on a tie, served longest ago). Producers are compared only
    /// within their user: a client just connected has been given nothing, and across users
    /// that would win it every tie against a trainer that has run for hours.
    fn hand_over(&mut self) {
        let waiting = |t: &Tenancy| t.waiting > t.granted;
        let uid = self
            .tenants
            .values()
            .filter(|t| waiting(t))
            .map(|t| t.uid)
            .min_by_key(|uid| {
                let u = self.users.get(uid).copied().unwrap_or_default();
                (u.given, u.served)
            });
        let next = uid.and_then(|uid| {
            self.tenants
                .iter()
                .filter(|(_, t)| t.uid == uid && waiting(t))
                .min_by_key(|(_, t)| (t.given, t.served))
                .map(|(&id, _)| id)
        });
        let Some(id) = next else {
            self.free += 1;
            return;
        };
        self.clock += 1;
        let clock = self.clock;
        self.start(id);
        if let Some(t) = self.tenants.get_mut(&id) {
            t.granted += 1;
            t.served = clock;
            t.wake.notify_one();
            let uid = t.uid;
            self.users.entry(uid).or_default().served = clock;
        }
    }

    /// A turn of producer `id` has ended.
    fn give_back(&mut self, id: u64) {
        // A producer that is not here holds no turn (it cannot: see `Tenant::drop`).
        let Some(t) = self.tenants.get_mut(&id) else {
            return;
        };
        t.running = t.running.saturating_sub(1);
        self.hand_over();
    }
}

/// One producer's claim on the daemon's decode turns; it leaves the shares when dropped.
pub(super) struct Tenant {
    shares: Arc<Shares>,
    id: u64,
}

impl Tenant {
    /// The [`Gate`] of one fill: a turn for each image, or stop as soon as `gone` says so.
    pub(super) fn gate<'a>(&'a self, gone: &'a (dyn Fn() -> bool + Sync)) -> TenantGate<'a> {
        TenantGate { tenant: self, gone }
    }

    /// Waits for a turn; `false` if `gone` said stop first.
    fn take(&self, gone: &dyn Fn() -> bool) -> bool {
        let Some(mut s) = self.shares.lock() else {
            return !gone();
        };
        if s.free > 0 {
            s.free -= 1;
            s.wake_up(self.id);
            s.start(self.id);
            return true;
        }
        if !s.wait_for(self.id) {
            return !gone();
        }
        self.granted(s, gone)
    }

    /// After an image: gives the turn back while waiting for one, so that it goes to the
    /// waiting producer with the smallest share, this one included: the worker keeps it
    /// unless another has less (a worker that let go first and then asked would lose it, every
    /// image, to whoever waited at that instant).
    fn pass(&self, gone: &dyn Fn() -> bool) -> bool {
        let Some(mut s) = self.shares.lock() else {
            return !gone();
        };
        // Nobody else waits (one trainer alone, the usual case): it keeps its turn without a
        // hand-over and its wake-up.
        let others = s
            .tenants
            .iter()
            .any(|(&id, t)| id != self.id && t.waiting > t.granted);
        if !others {
            s.keep(self.id);
            return true;
        }
        if !s.wait_for(self.id) {
            return !gone();
        }
        s.give_back(self.id);
        self.granted(s, gone)
    }

    /// Waits, as one of this producer's waiting workers, until a turn is handed to it: `true`;
    /// or until `gone` says stop: `false`, and it no longer waits.
    fn granted(&self, mut s: MutexGuard<'_, State>, gone: &dyn Fn() -> bool) -> bool {
        let Some(wake) = s.tenants.get(&self.id).map(|t| Arc::clone(&t.wake)) else {
            return !gone();
        };
        loop {
            let granted = s.tenants.get_mut(&self.id).is_some_and(|t| {
                let got = t.granted > 0;
                if got {
                    t.granted -= 1;
                    t.waiting -= 1;
                }
                got
            });
            if granted {
                return true;
            }
            if gone() {
                if let Some(t) = s.tenants.get_mut(&self.id) {
                    t.waiting -= 1;
                }
                return false;
            }
            s = match wake.wait_timeout(s, RECHECK) {
                Ok((s, _)) => s,
                Err(_) => return !gone(),
            };
        }
    }

    /// Ends a turn taken by [`Tenant::take`].
    fn give_back(&self) {
        if let Some(mut s) = self.shares.lock() {
            s.give_back(self.id);
        }
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let Some(mut s) = self.shares.lock() else {
            return;
        };
        // Its workers are done (a fill's threads end before it returns); turns handed to it
        // that nobody picked up go to the others.
        if let Some(t) = s.tenants.remove(&self.id) {
            for _ in 0..t.running {
                s.hand_over();
            }
            if !s.tenants.values().any(|o| o.uid == t.uid) {
                s.users.remove(&t.uid);
            }
        }
    }
}

/// A [`Tenant`]'s gate for one fill.
pub(super) struct TenantGate<'a> {
    tenant: &'a Tenant,
    gone: &'a (dyn Fn() -> bool + Sync),
}

impl Gate for TenantGate<'_> {
    fn enter(&self) -> bool {
        !(self.gone)() && self.tenant.take(self.gone)
    }

    fn leave(&self) {
        self.tenant.give_back();
    }

    fn pass(&self) -> bool {
        if (self.gone)() {
            self.tenant.give_back();
            return false;
        }
        self.tenant.pass(self.gone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    /// `tenants` as (id, uid, threads), whose workers each hold a turn for 2 ms per image until
    /// `run` is over; returns the images each tenant made.
    fn contend(turns: usize, tenants: &[(u64, u32, usize)], run: Duration) -> Vec<usize> {
        let shares = Shares::new(turns);
        let stop = AtomicBool::new(false);
        let counts: Vec<AtomicUsize> = tenants.iter().map(|_| AtomicUsize::new(0)).collect();
        let held: Vec<Tenant> = tenants
            .iter()
            .map(|&(id, uid, _)| shares.tenant(id, uid))
            .collect();
        let in_use = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for ((tenant, &(_, _, threads)), count) in held.iter().zip(tenants).zip(&counts) {
                for _ in 0..threads {
                    let (stop, in_use) = (&stop, &in_use);
                    scope.spawn(move || {
                        let gone = || stop.load(Ordering::Relaxed);
                        let gate = tenant.gate(&gone);
                        // As a fill's worker does: a turn, then one pass per image.
                        let mut go = gate.enter();
                        while go {
                            let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= turns, "{now} turns held of {turns}");
                            std::thread::sleep(Duration::from_millis(2));
                            in_use.fetch_sub(1, Ordering::SeqCst);
                            count.fetch_add(1, Ordering::Relaxed);
                            go = gate.pass();
                        }
                    });
                }
            }
            std::thread::sleep(run);
            stop.store(true, Ordering::Relaxed);
        });
        counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn a_user_with_many_producers_gets_the_share_of_a_user_with_one() {
        // User 7 runs fourteen producers of four threads each, user 8 one of four: two turns,
        // one each, whatever the thread counts.
        let mut tenants: Vec<(u64, u32, usize)> = (0..14).map(|id| (id, 7, 4)).collect();
        tenants.push((99, 8, 4));
        let got = contend(2, &tenants, Duration::from_millis(600));
        let many: usize = got[..14].iter().sum();
        let one = got[14];
        let ratio = one as f64 / many as f64;
        assert!((0.7..=1.4).contains(&ratio), "user 8 {one}, user 7 {many}");
    }

    #[test]
    fn every_user_gets_its_share_at_one_two_and_four_turns() {
        // Users that each want more than an equal share, with very different producer and
        // thread counts: 12 rings of 2 threads, 1 ring of 4 threads, 4 rings of 3 threads.
        // Every user must make its equal share of the images, within 10 %.
        let users: [(u32, u64, usize); 3] = [(7, 12, 2), (8, 1, 4), (9, 4, 3)];
        let mut table = String::from("turns users shares (images per user / equal share)\n");
        for turns in [1, 2, 4] {
            for n in [2, 3] {
                let mut tenants = Vec::new();
                for &(uid, producers, threads) in &users[..n] {
                    for p in 0..producers {
                        tenants.push((u64::from(uid) * 100 + p, uid, threads));
                    }
                }
                let got = contend(turns, &tenants, Duration::from_millis(900));
                let per_user: Vec<usize> = users[..n]
                    .iter()
                    .map(|&(uid, ..)| {
                        tenants
                            .iter()
                            .zip(&got)
                            .filter(|((_, u, _), _)| *u == uid)
                            .map(|(_, c)| c)
                            .sum()
                    })
                    .collect();
                let equal = per_user.iter().sum::<usize>() as f64 / n as f64;
                let shares: Vec<f64> = per_user.iter().map(|&c| c as f64 / equal).collect();
                table.push_str(&format!("{turns} {n} {shares:.3?} {per_user:?}\n"));
                assert!(
                    shares.iter().all(|s| (0.9..=1.1).contains(s)),
                    "{turns} turns, {n} users: {shares:.3?} ({per_user:?})\n{table}"
                );
            }
        }
        eprintln!("{table}");
    }

    #[test]
    fn a_user_that_was_idle_joins_at_the_others_count_not_its_own() {
        let shares = Shares::new(1);
        let busy = shares.tenant(1, 5);
        let never = || false;
        let gate = busy.gate(&never);
        assert!(gate.enter());
        for _ in 0..1000 {
            assert!(gate.pass());
        }
        // User 6 arrives after user 5 was given 1001 turns: it is not owed 1001 of them.
        let late = shares.tenant(2, 6);
        let s = shares.lock().map(|mut s| {
            s.wake_up(2);
            (s.users[&5].given, s.users[&6].given)
        });
        assert_eq!(s, Some((1001, 1001)));
        drop(late);
        // Nor when user 5 is idle at that moment (its ring full, its reader slower than the
        // loader): a trainer that paces itself is not starved by whoever comes next.
        gate.leave();
        let later = shares.tenant(3, 7);
        let s = shares.lock().map(|mut s| {
            s.wake_up(3);
            s.users[&7].given
        });
        assert_eq!(s, Some(1001));
        drop(later);
    }

    #[test]
    fn producers_of_one_user_share_its_turns_and_a_lone_producer_takes_all() {
        // Two producers of one user, with six threads and with two, and four turns: two each
        // (max-min), so over time they make about as many images. Then one alone uses every
        // turn.
        let got = contend(4, &[(1, 5, 6), (2, 5, 2)], Duration::from_millis(600));
        let ratio = got[0] as f64 / got[1] as f64;
        assert!((0.7..=1.4).contains(&ratio), "{got:?}");
        let shares = Shares::new(3);
        let t = shares.tenant(1, 5);
        let never = || false;
        let gate = t.gate(&never);
        assert!(gate.enter() && gate.enter() && gate.enter());
        assert_eq!(shares.lock().map(|s| s.free), Some(0));
        for _ in 0..3 {
            gate.leave();
        }
        assert_eq!(shares.lock().map(|s| s.free), Some(3));
    }

    #[test]
    fn a_waiting_worker_whose_client_left_stops_and_turns_of_a_dropped_producer_come_back() {
        let shares = Shares::new(1);
        let busy = shares.tenant(1, 5);
        let never = || false;
        assert!(busy.gate(&never).enter());
        let waiting = shares.tenant(2, 6);
        let left = AtomicBool::new(false);
        let t0 = Instant::now();
        std::thread::scope(|scope| {
            let h = scope.spawn(|| {
                let gone = || left.load(Ordering::Relaxed);
                waiting.gate(&gone).enter()
            });
            std::thread::sleep(Duration::from_millis(50));
            left.store(true, Ordering::Relaxed);
            assert!(!h.join().unwrap(), "a worker whose client left got a turn");
        });
        assert!(t0.elapsed() < Duration::from_secs(5));
        // The holder is dropped without giving its turn back (its fill panicked): the turn is
        // free again for a new producer.
        drop(busy);
        let next = shares.tenant(3, 7);
        assert!(next.gate(&never).enter());
    }
}
