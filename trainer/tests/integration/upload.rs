//! A ring slot's way to the device on the CPU backend: no host copy, the pixels exactly the
//! slot's, and the slot back to the daemon only when both the step and burn have let go.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::Device;
use loader::request::job::Position;
use loader::wire::client::{Client, ClientOptions};
use trainer::data::DataSource;
use trainer::data::upload::{Pixels, Uploader};
use trainer::device::DeviceKind;

use crate::common;

#[test]
fn a_slot_is_uploaded_without_a_host_copy_and_released_after_its_last_holder() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = common::dataset(dir.path());
    let config = common::tiny_recipe();
    let jobs = config.jobs().unwrap();
    let batches = DataSource::Shards {
        dir: shards,
        workers: 1,
    }
    .open()
    .unwrap();
    // One slot: the daemon can fill the next batch only once this one is released.
    let mut client = Client::connect(ClientOptions {
        socket: batches.socket().to_path_buf(),
        job_id: "upload-test".into(),
        job: jobs.train_rank(1, 0),
        start: Position::default(),
        epochs: Some(1),
        slots: Some(1),
        reconnect_timeout: Duration::from_secs(30),
    })
    .unwrap();
    let batch = Arc::new(client.next_batch().unwrap().unwrap());
    let side = config.img_size;
    let shape = [batch.count, side, side];
    let expected: Vec<f32> = batch.images().iter().map(|&b| f32::from(b)).collect();

    let upload = Uploader::new(DeviceKind::Flex);
    let pixels = upload
        .upload(&Pixels::Slot(Arc::clone(&batch)), shape, &Device::flex())
        .unwrap();
    assert_eq!(upload.host_bytes_copied(), (0, 1), "a slot is not copied");
    // The device's pixels are the slot's, NHWC → NCHW.
    let got: Vec<f32> = pixels
        .permute([0, 2, 3, 1])
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(got, expected);

    // The next batch in a thread, so that a slot never released fails the test, not hangs it.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let next = client.next_batch().map(|b| b.map(|b| b.position.step));
        let _ = tx.send(next.map_err(|e| e.to_string()));
    });
    // The step still holds the batch: the slot stays the step's.
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the slot was released while the step still held its batch"
    );
    drop(batch);
    let next = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the slot was not released after its last holder let go")
        .unwrap();
    assert_eq!(next, Some(1));
    reader.join().unwrap();

    // Pixels the caller keeps are copied once, and counted.
    let host = vec![0u8; expected.len()];
    upload
        .upload(&Pixels::Host(&host), shape, &Device::flex())
        .unwrap();
    assert_eq!(upload.host_bytes_copied(), (expected.len() as u64, 2));
}
