//! The suite runs against either store: redb (the default), or PostgreSQL when
//! `MODELROUTE_TEST_STORE=postgres`, on the server at `MODELROUTE_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`). Each test server then gets a
//! database of its own, made for it and dropped after it.

use std::thread;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Whether this run's servers keep their state in PostgreSQL.
pub fn postgres_run() -> bool {
    match std::env::var("MODELROUTE_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("redb") | Err(_) => false,
        Ok(other) => panic!("MODELROUTE_TEST_STORE={other}: expected redb or postgres"),
    }
}

/// A database of one test server, dropped with it.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestDatabase {
    /// A new, empty database, when this run uses PostgreSQL.
    pub fn for_this_run() -> Option<TestDatabase> {
        postgres_run().then(TestDatabase::create)
    }

    pub fn create() -> TestDatabase {
        let admin_url = std::env::var("MODELROUTE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_URL.to_string());
        let name = format!("mr_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(&admin_url).expect("MODELROUTE_TEST_DATABASE_URL parses");
        url.set_path(&name);
        let statement = format!("CREATE DATABASE {name}");
        admin(&admin_url, &statement);
        TestDatabase {
            admin_url,
            name,
            url: url.to_string(),
        }
    }

    /// The `[store]` table of a server's config that uses it.
    pub fn config(&self) -> String {
        format!("\n[store]\nbackend = \"postgres\"\nurl = {:?}\n", self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        admin(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

impl TestDatabase {
    /// Closes every connection to the database but this one's, as a database
    /// restart or an operator's `pg_terminate_backend` does; answers how many.
    pub fn close_connections(&self) -> i64 {
        let (url, name) = (self.url.clone(), self.name.clone());
        thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let row = client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .unwrap();
            row.get(0)
        })
        .join()
        .unwrap()
    }
}

/// Counts the connections to a database, from a thread of its own, until stopped.
pub struct ConnectionCount {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counting: Option<thread::JoinHandle<i64>>,
}

impl ConnectionCount {
    /// The most connections seen at once (the counter's own not counted).
    pub fn stop(mut self) -> i64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.counting.take().unwrap().join().unwrap()
    }
}

impl TestDatabase {
    /// Starts counting the connections to the database every few milliseconds.
    pub fn count_connections(&self) -> ConnectionCount {
        let (url, name) = (self.url.clone(), self.name.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let counting = thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut most = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&name],
                    )
                    .unwrap();
                most = most.max(row.get::<_, i64>(0));
                thread::sleep(std::time::Duration::from_millis(2));
            }
            most
        });
        ConnectionCount {
            stop,
            counting: Some(counting),
        }
    }
}

/// Runs one statement on the admin connection (on a thread of its own: the
/// blocking client must not run on the test's async runtime).
fn admin(url: &str, statement: &str) {
    let (url, statement) = (url.to_string(), statement.to_string());
    thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|error| {
            panic!("connecting to the test database server {url}: {error}")
        });
        client
            .batch_execute(&statement)
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    })
    .join()
    .expect("the database statement ran");
}
