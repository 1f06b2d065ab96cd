//! A read-api over a real three-node Redis Cluster (`REDIS_URL=redis+cluster://...`): views,
//! orders and customer hashes are cached and served from keys spread over every node, an
//! update is never answered with the older cached version, and a rebuild drops the keys of
//! every node, not just one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ordering_schema::events::{AggregateType, OrderData, OrderStatus, ProductData};
use ordering_tests::pipeline::metric_sum;
use ordering_tests::process::free_addr;
use ordering_tests::read_app::{
    ReadApp, ReadOptions, next_order, next_product, order, order_event, product, product_event, redis_server,
};
use ordering_tests::write_app::{Answer, answer, customer_token};
use read_api::rebuild::{self, Options};
use uuid::Uuid;

const PRODUCTS: usize = 20;
const CUSTOMERS: usize = 6;
const ORDERS_PER_CUSTOMER: usize = 2;

/// `redis-cli -p <port> <args>`'s output; panics if it fails.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three cluster-mode `redis-server`s in a temporary directory, killed (and the directory
/// deleted) on drop, panics included.
struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Child>,
}

impl Cluster {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("read-api-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let mut cluster = Self {
            dir,
            ports: Vec::new(),
            nodes: Vec::new(),
        };
        for _ in 0..3 {
            // The bus port is given explicitly: the default (port + 10000) may be taken or
            // beyond 65535 for an ephemeral port.
            let (port, bus) = (free_addr().port(), free_addr().port());
            let dir = cluster.dir.to_str().expect("utf-8 temp dir").to_owned();
            let (bus, config, log) = (
                bus.to_string(),
                format!("nodes-{port}.conf"),
                format!("{dir}/redis-{port}.log"),
            );
            let child = redis_server(
                port,
                &[
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &config,
                    "--dir",
                    &dir,
                    "--logfile",
                    &log,
                ],
            );
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            wait_until("redis-server to accept connections", Duration::from_secs(5), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .await;
        }
        let addrs: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(cluster.ports[0], &create);
        for &port in &cluster.ports {
            wait_until("cluster_state:ok on every node", Duration::from_secs(15), || {
                let info = cli(port, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            })
            .await;
        }
        cluster
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The keys under `prefix` held by each node (a plain SCAN of that node only).
    fn keys_per_node(&self, prefix: &str) -> BTreeMap<u16, Vec<String>> {
        self.ports
            .iter()
            .map(|&port| {
                let out = cli(port, &["--scan", "--pattern", &format!("{prefix}*")]);
                (port, out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
            })
            .collect()
    }

    fn key_count(&self, prefix: &str) -> usize {
        self.keys_per_node(prefix).values().map(Vec::len).sum()
    }

    /// How many nodes hold a key under `prefix` starting with `kind_prefix`.
    fn nodes_holding(&self, prefix: &str, kind_prefix: &str) -> usize {
        let start = format!("{prefix}{kind_prefix}");
        self.keys_per_node(prefix)
            .values()
            .filter(|keys| keys.iter().any(|k| k.starts_with(&start)))
            .count()
    }

    /// Empties every node.
    fn flush(&self) {
        for &port in &self.ports {
            cli(port, &["flushall"]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GET that must answer 200 (never a 5xx, never anything else).
async fn get(app: &ReadApp, path: &str, token: Option<&str>) -> Answer {
    let mut req = app.get(path);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let a = answer(req).await;
    assert_eq!(a.status, 200, "GET {path}: {}", a.text);
    a
}

struct Customer {
    id: Uuid,
    token: String,
    orders: Vec<OrderData>,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_cluster_caches_views_across_slots_and_a_rebuild_drops_every_node() {
    // Declared first, so dropped last: the read-api stops before its Redis does.
    let cluster = Cluster::start().await;
    let app = ReadApp::start_with(ReadOptions {
        redis_url: cluster.url(),
        stream: true,
        ..Default::default()
    })
    .await;
    let prefix = app.settings.redis_key_prefix.clone();
    let cache = &app.state().cache;

    let ready = get(&app, "/health/ready", None).await;
    assert_eq!(ready.body["status"], "ready", "{}", ready.text);
    assert_eq!(ready.body["dependencies"]["redis"]["ok"], true, "{}", ready.text);

    // Products and orders, published as events: the projector writes every view (and every
    // customer's hash) into the cluster.
    let products: Vec<ProductData> = (0..PRODUCTS)
        .map(|i| product(&format!("CL-{i}"), &format!("Clustered {i}"), "c", 100 + i as i64, 50))
        .collect();
    for p in &products {
        app.publish(&product_event(p)).await;
    }
    let mut customers = Vec::new();
    for c in 0..CUSTOMERS {
        let id = Uuid::now_v7();
        let mut orders = Vec::new();
        for o in 0..ORDERS_PER_CUSTOMER {
            let placed = order(
                id,
                &[(&products[(c + o) % PRODUCTS], 1)],
                ordering_schema::events::now(),
            );
            app.publish(&order_event(&placed)).await;
            orders.push(placed);
        }
        customers.push(Customer {
            id,
            token: customer_token(id),
            orders,
        });
    }
    for p in &products {
        app.wait_version("rv_products", p.id, 1).await;
    }
    for c in &customers {
        for o in &c.orders {
            app.wait_version("rv_orders", o.id, 1).await;
        }
    }
    let all_keys = PRODUCTS + CUSTOMERS * ORDERS_PER_CUSTOMER + CUSTOMERS;
    wait_until("the projector's writes to reach Redis", Duration::from_secs(10), || {
        cluster.key_count(&prefix) == all_keys
    })
    .await;
    // The keys really are spread: each kind lands on several nodes (so on several slots).
    for kind in ["p:", "o:", "c:"] {
        assert!(
            cluster.nodes_holding(&prefix, kind) >= 2,
            "{kind} keys all on one node: {:?}",
            cluster.keys_per_node(&prefix)
        );
    }
    for p in &products {
        let (v, _) = cache
            .raw_view(AggregateType::Product, p.id)
            .await
            .expect("product in Redis");
        assert_eq!(v, 1);
    }

    // With both tiers empty: a miss (PostgreSQL), then hits, from the in-process tier and from
    // Redis (the fill went to the key's own node).
    cluster.flush();
    cache.clear_local();
    for p in &products {
        let path = format!("/v1/products/{}", p.id);
        let miss = get(&app, &path, None).await;
        assert_eq!(
            (miss.header("x-cache"), miss.body["version"].as_i64()),
            (Some("miss"), Some(1))
        );
        let hit = get(&app, &path, None).await;
        assert_eq!(hit.header("x-cache"), Some("hit"));
        assert_eq!(hit.body, miss.body);
    }
    for c in &customers {
        for o in &c.orders {
            let path = format!("/v1/orders/{}", o.id);
            let miss = get(&app, &path, Some(&c.token)).await;
            assert_eq!(
                (miss.header("x-cache"), miss.body["version"].as_i64()),
                (Some("miss"), Some(1))
            );
            assert_eq!(get(&app, &path, Some(&c.token)).await.header("x-cache"), Some("hit"));
        }
        for path in [
            format!("/v1/customers/{}/orders", c.id),
            format!("/v1/customers/{}/summary", c.id),
        ] {
            let miss = get(&app, &path, Some(&c.token)).await;
            assert_eq!(miss.header("x-cache"), Some("miss"), "{path}");
            let hit = get(&app, &path, Some(&c.token)).await;
            assert_eq!(hit.header("x-cache"), Some("hit"), "{path}");
            assert_eq!(hit.body, miss.body, "{path}");
        }
        let list = get(&app, &format!("/v1/customers/{}/orders", c.id), Some(&c.token)).await;
        assert_eq!(list.body["items"].as_array().map(Vec::len), Some(ORDERS_PER_CUSTOMER));
    }
    assert_eq!(
        cluster.key_count(&prefix),
        all_keys,
        "{:?}",
        cluster.keys_per_node(&prefix)
    );
    cache.clear_local();
    for p in &products {
        let hit = get(&app, &format!("/v1/products/{}", p.id), None).await;
        assert_eq!(
            (hit.header("x-cache"), hit.body["version"].as_i64()),
            (Some("hit"), Some(1))
        );
    }

    // Updates: every product and every customer's first order move on one version; the newer
    // version is what is served from then on, from either tier (never the cached older one).
    let updated: Vec<ProductData> = products.iter().map(|p| next_product(p, |p| p.stock -= 1)).collect();
    for p in &updated {
        app.publish(&product_event(p)).await;
    }
    let mut paid = Vec::new();
    for c in &customers {
        let o = next_order(&c.orders[0], OrderStatus::Paid);
        app.publish(&order_event(&o)).await;
        paid.push(o);
    }
    for p in &updated {
        app.wait_version("rv_products", p.id, 2).await;
    }
    for o in &paid {
        app.wait_version("rv_orders", o.id, 2).await;
    }
    for p in &updated {
        let path = format!("/v1/products/{}", p.id);
        let a = get(&app, &path, None).await;
        assert_eq!(
            (a.body["version"].as_i64(), a.body["stock"].as_i64()),
            (Some(2), Some(49))
        );
        assert_eq!(a.header("etag"), Some("\"2\""));
    }
    cache.clear_local();
    for p in &updated {
        let a = get(&app, &format!("/v1/products/{}", p.id), None).await;
        assert_eq!(
            (a.header("x-cache"), a.body["version"].as_i64()),
            (Some("hit"), Some(2))
        );
        let (v, _) = cache
            .raw_view(AggregateType::Product, p.id)
            .await
            .expect("product in Redis");
        assert_eq!(v, 2, "Redis holds the newer version");
    }
    for (c, o) in customers.iter().zip(&paid) {
        let a = get(&app, &format!("/v1/orders/{}", o.id), Some(&c.token)).await;
        assert_eq!(
            (a.body["version"].as_i64(), a.body["status"].as_str()),
            (Some(2), Some("paid"))
        );
        let (v, _) = cache
            .raw_view(AggregateType::Order, o.id)
            .await
            .expect("order in Redis");
        assert_eq!(v, 2);
        // The customer's hash was emptied by the newer revision: the list is read again.
        let path = format!("/v1/customers/{}/orders?status=paid", c.id);
        let miss = get(&app, &path, Some(&c.token)).await;
        assert_eq!(miss.header("x-cache"), Some("miss"));
        assert_eq!(miss.body["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(get(&app, &path, Some(&c.token)).await.header("x-cache"), Some("hit"));
        let summary = get(&app, &format!("/v1/customers/{}/summary", c.id), Some(&c.token)).await;
        assert_eq!(summary.header("x-cache"), Some("miss"), "{}", summary.text);
    }

    // A rebuild drops every cached key, on every node.
    let before = cluster.key_count(&prefix);
    assert_eq!(before, all_keys, "{:?}", cluster.keys_per_node(&prefix));
    let report = rebuild::run(
        &Options {
            database_url: app.settings.database_url.clone(),
            amqp_url: app.settings.amqp_url.clone(),
            stream: app.settings.stream.clone(),
            from_available: false,
            idle: Duration::from_secs(2),
        },
        Some(cache),
        |_| {},
    )
    .await
    .expect("rebuild");
    assert_eq!(
        report.applied as usize,
        2 * PRODUCTS + CUSTOMERS * ORDERS_PER_CUSTOMER + CUSTOMERS
    );
    let left = cluster.keys_per_node(&prefix);
    assert!(
        left.values().all(Vec::is_empty),
        "keys left after the rebuild dropped the cache: {left:?}"
    );
    assert_eq!(report.cache_keys_dropped as usize, before);
    // And the cache fills again afterwards.
    for p in &updated {
        let path = format!("/v1/products/{}", p.id);
        let miss = get(&app, &path, None).await;
        assert_eq!(
            (miss.header("x-cache"), miss.body["version"].as_i64()),
            (Some("miss"), Some(2))
        );
        assert_eq!(get(&app, &path, None).await.header("x-cache"), Some("hit"));
    }
    assert!(cluster.nodes_holding(&prefix, "p:") >= 2);

    // No Redis call failed along the way (a CROSSSLOT or MOVED error would be swallowed and
    // only show here), and nothing waits for a retry.
    let metrics = app.metrics().await;
    assert_eq!(metric_sum(&metrics, "read_cache_redis_errors_total"), 0.0);
    assert_eq!(cache.pending_writes(), 0);
    let ready = get(&app, "/health/ready", None).await;
    assert_eq!(ready.body["dependencies"]["redis"]["ok"], true, "{}", ready.text);
}
