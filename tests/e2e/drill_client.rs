//! The drill's other user (`tests/e2e/drill.rs`): run under another uid, it opens `HOLDERS`
//! connections that take every slot of their rings and never release one, then, for
//! `SECONDS`, `CHURNERS` threads connect and leave as fast as they can. It prints how many of
//! each it made and exits, its connections closing with it.
//!
//! `drill-client SOCKET HOLDERS CHURNERS SECONDS`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use loader::request::transform::{TrainTransform, TransformSpec};
use loader::wire::client::{Client, ClientOptions};
use loader::{JobSpec, Position};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, holders, churners, seconds] = &args[..] else {
        eprintln!("usage: drill-client SOCKET HOLDERS CHURNERS SECONDS");
        std::process::exit(2);
    };
    let number = |s: &str| -> u64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("drill-client: {s:?} is not a number");
            std::process::exit(2)
        })
    };
    let socket = PathBuf::from(socket);
    let Some(TransformSpec::Train(a1)) = TransformSpec::preset("a1") else {
        unreachable!("a1 is a train transform")
    };
    let options = |job_id: &str, seed: u64, img_size: u32, batch: u32| ClientOptions {
        socket: socket.clone(),
        job_id: job_id.into(),
        job: JobSpec::single(
            "train",
            TransformSpec::Train(TrainTransform { img_size, ..a1 }),
            seed,
            batch,
        ),
        start: Position::default(),
        epochs: None,
        slots: Some(8),
        reconnect_timeout: Duration::from_secs(5),
    };
    // Each holder's producer fills its 8 slots and then waits for a release that never comes.
    let held: Vec<Client> = (0..number(holders))
        .map(|i| {
            Client::connect(options("drill-hold", i, 64, 16)).unwrap_or_else(|e| {
                eprintln!("drill-client: holder {i}: {e}");
                std::process::exit(1)
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(number(seconds));
    let churned: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..number(churners))
            .map(|t| {
                let options = &options;
                s.spawn(move || {
                    let mut n = 0;
                    while Instant::now() < until {
                        // Refusals (the ring rate, max_clients) count as churn too.
                        drop(Client::connect(options(
                            "drill-churn",
                            t * 1_000_000 + n,
                            64,
                            16,
                        )));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or(0)).sum()
    });
    println!("held {} rings; churned {churned} clients", held.len());
}
