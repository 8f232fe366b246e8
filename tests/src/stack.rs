//! [`TestStack`]: core, edge and the delivery adapter started in-process on `127.0.0.1:0`
//! (listeners bound before the services start, so no sleeps and no fixed ports), with a
//! temporary data directory, a test Spine directory, and clients for every API.
//! [`TestStack::shutdown`] stops all three and re-raises any error or panic.
//!
//! With [`TestStackBuilder::adapter_stopped`] the adapter is configured but not started: a
//! test starts (and stops or kills) adapters itself with [`TestStack::spawn_adapter`], e.g.
//! to queue a backlog first or to kill an adapter mid-send and start a new one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nems_core::{Core, CoreConfig, CoreListeners};
use nems_edge::EdgeConfig;
use nems_mesh_adapter::{AdapterConfig, SinkKind};
use nems_proto::v1::bundle_service_client::BundleServiceClient;
use nems_proto::v1::delivery_service_client::DeliveryServiceClient;
use nems_proto::v1::directory_service_client::DirectoryServiceClient;
use nems_proto::v1::event_service_client::EventServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::http::HttpClient;

/// The Spine directory every test stack starts with.
pub const TEST_DIRECTORY: &str = r#"
[[system]]
asid = "200000000111"
description = "subscriber and publisher RR8"
ods_codes = ["RR8"]
category_bags = [
  "NEMS_SUBS_TYPE:EXPLICIT", "NEMS_SUBS_TYPE:GENERIC",
  "NEMS_EVENT_ID:BIRTHNOTIFICATION_1", "NEMS_EVENT_ID:DEATHNOTIFICATION_1",
  "NEMS_EVENT_ID:CHANGEOFADDRESS_1", "NEMS_EVENT_ID:CHANGEOFGP_1",
  "NEMS_EVENT_ID:PDSRECORDCHANGE_1", "NEMS_EVENT_ID:NEWBORNHEARING_1",
  "NEMS_EVENT_ID:NIPEOUTCOME_1", "NEMS_EVENT_ID:BLOODSPOTTESTOUTCOME_1",
  "NEMS_EVENT_ID:VACCINATIONS_1", "NEMS_EVENT_ID:PROFESSIONALCONTACTS_1",
]
publish_message_sets = ["Vaccinations", "Professionalcontacts"]

[[system]]
asid = "200000000222"
description = "screening publisher"
ods_codes = ["Y01234"]
publish_message_sets = ["Bloodspottestoutcome", "Newbornhearing", "Nipeoutcome"]

[[system]]
asid = "200000000333"
description = "PDS publisher"
ods_codes = ["X26"]
pds_publisher = true

[[system]]
asid = "200000000444"
description = "another organisation ABC: explicit vaccinations only"
ods_codes = ["ABC"]
category_bags = ["NEMS_SUBS_TYPE:EXPLICIT", "NEMS_EVENT_ID:VACCINATIONS_1"]

[[mailbox]]
id = "RR8MBX01"
ods_code = "RR8"

[[mailbox]]
id = "RR8MBX02"
ods_code = "RR8"

[[mailbox]]
id = "RR8MBX03"
ods_code = "RR8"

[[mailbox]]
id = "ABCMBX01"
ods_code = "ABC"

[[mailbox]]
id = "X26MBX01"
ods_code = "X26"
"#;

/// Where the adapter delivers.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The folder sink under the stack's outbox folder.
    Folder,
    /// MESH at `base_url` as `mailbox` with `password` (shared key `TestKey`).
    Mesh {
        /// MESH base URL.
        base_url: String,
        /// The service's own mailbox.
        mailbox: String,
        /// Its password.
        password: String,
    },
    /// No adapter (deliveries stay queued).
    None,
}

/// Builds a [`TestStack`].
pub struct TestStackBuilder {
    directory: String,
    sink: Sink,
    data_dir: Option<PathBuf>,
    core: Box<dyn FnOnce(&mut CoreConfig) + Send>,
    edge: Box<dyn FnOnce(&mut EdgeConfig) + Send>,
    adapter: Box<dyn FnOnce(&mut AdapterConfig) + Send>,
    adapter_stopped: bool,
}

impl std::fmt::Debug for TestStackBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStackBuilder")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

/// A running stack.
#[derive(Debug)]
pub struct TestStack {
    /// Core's service API address.
    pub core_addr: SocketAddr,
    /// Core's operator API address.
    pub operator_addr: SocketAddr,
    /// The edge's HTTP address.
    pub edge_addr: SocketAddr,
    /// The edge's gRPC address (`BundleService`).
    pub edge_grpc_addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The folder sink root.
    pub outbox: PathBuf,
    /// An HTTP client for the edge.
    pub http: HttpClient,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    /// The adapter the stack started itself (stopped first at shutdown).
    adapter: Option<AdapterHandle>,
    /// The adapter's configuration (`None` with [`Sink::None`]), for [`TestStack::spawn_adapter`].
    adapter_config: Option<AdapterConfig>,
    _temp: Option<tempfile::TempDir>,
}

/// An adapter started by [`TestStack::spawn_adapter`]; the test stops or kills it.
#[derive(Debug)]
pub struct AdapterHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), String>>,
}

impl TestStack {
    /// A builder with the test directory and the folder sink.
    pub fn builder() -> TestStackBuilder {
        TestStackBuilder {
            directory: TEST_DIRECTORY.to_string(),
            sink: Sink::Folder,
            data_dir: None,
            core: Box::new(|_| {}),
            edge: Box::new(|_| {}),
            adapter: Box::new(|_| {}),
            adapter_stopped: false,
        }
    }

    /// Starts the default stack.
    pub async fn start() -> TestStack {
        Self::builder().start().await
    }

    fn channel(addr: SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid url")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect_lazy()
    }

    /// A channel to core's service API.
    pub fn core_channel(&self) -> Channel {
        Self::channel(self.core_addr)
    }

    /// Subscription client.
    pub fn subscriptions(&self) -> SubscriptionServiceClient<Channel> {
        SubscriptionServiceClient::new(self.core_channel())
    }

    /// Event client.
    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.core_channel()).max_encoding_message_size(16 << 20)
    }

    /// Delivery client.
    pub fn deliveries(&self) -> DeliveryServiceClient<Channel> {
        DeliveryServiceClient::new(self.core_channel()).max_decoding_message_size(16 << 20)
    }

    /// The edge's `BundleService` client.
    pub fn bundles(&self) -> BundleServiceClient<Channel> {
        BundleServiceClient::new(Self::channel(self.edge_grpc_addr))
            .max_encoding_message_size(16 << 20)
    }

    /// Operator client.
    pub fn operator(&self) -> OperatorServiceClient<Channel> {
        OperatorServiceClient::new(Self::channel(self.operator_addr))
            .max_encoding_message_size(64 << 20)
    }

    /// Directory client.
    pub fn directory(&self) -> DirectoryServiceClient<Channel> {
        DirectoryServiceClient::new(Self::channel(self.operator_addr))
    }

    /// The edge's base URL (`http://127.0.0.1:port`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.edge_addr)
    }

    /// Returns the adapter configuration the stack was built with (`None` with [`Sink::None`]).
    pub fn adapter_config(&self) -> Option<&AdapterConfig> {
        self.adapter_config.as_ref()
    }

    /// Starts another adapter with the stack's adapter configuration; the caller stops it
    /// ([`AdapterHandle::stop`]) or kills it ([`AdapterHandle::kill`]) before
    /// [`TestStack::shutdown`]. Panics with [`Sink::None`].
    pub fn spawn_adapter(&self) -> AdapterHandle {
        let config = self
            .adapter_config
            .clone()
            .expect("spawn_adapter needs a stack with a sink");
        AdapterHandle::spawn(config)
    }

    /// Stops everything, waits for it, and fails the test on any error or panic. The adapter
    /// stops first, while core can still take the outcomes of its in-flight deliveries.
    pub async fn shutdown(mut self) {
        if let Some(adapter) = self.adapter.take() {
            adapter.stop().await;
        }
        self.stop.send_replace(true);
        for (name, task) in self.tasks.drain(..) {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("{name} failed: {e}"),
                Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
                Err(_) => panic!("{name} did not stop within 30 s"),
            }
        }
    }
}

impl TestStackBuilder {
    /// Replaces the Spine directory file.
    pub fn directory(mut self, toml: &str) -> Self {
        self.directory = toml.to_string();
        self
    }

    /// Chooses the sink.
    pub fn sink(mut self, sink: Sink) -> Self {
        self.sink = sink;
        self
    }

    /// Uses `dir` as the data directory (for restarts); otherwise a temporary one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Adjusts core's configuration.
    pub fn core(mut self, f: impl FnOnce(&mut CoreConfig) + Send + 'static) -> Self {
        self.core = Box::new(f);
        self
    }

    /// Adjusts the edge's configuration.
    pub fn edge(mut self, f: impl FnOnce(&mut EdgeConfig) + Send + 'static) -> Self {
        self.edge = Box::new(f);
        self
    }

    /// Adjusts the adapter's configuration.
    pub fn adapter(mut self, f: impl FnOnce(&mut AdapterConfig) + Send + 'static) -> Self {
        self.adapter = Box::new(f);
        self
    }

    /// Configures the adapter but does not start it (see [`TestStack::spawn_adapter`]).
    pub fn adapter_stopped(mut self) -> Self {
        self.adapter_stopped = true;
        self
    }

    /// Starts the stack.
    pub async fn start(self) -> TestStack {
        let (temp, data_dir) = match self.data_dir {
            Some(dir) => (None, dir),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                let dir = t.path().to_path_buf();
                (Some(t), dir)
            }
        };
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let directory_file = data_dir.join("directory.toml");
        std::fs::write(&directory_file, &self.directory).expect("directory file");
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));

        let mut core_config = CoreConfig {
            listen: loopback,
            operator_listen: loopback,
            data_dir: data_dir.join("db"),
            directory_file: Some(directory_file),
            ..Default::default()
        };
        if let Some(url) = crate::postgres::test_database(&data_dir).await {
            core_config.database_url = Some(url);
        }
        (self.core)(&mut core_config);
        let service = TcpListener::bind(core_config.listen)
            .await
            .expect("bind core");
        let operator = TcpListener::bind(core_config.operator_listen)
            .await
            .expect("bind operator");
        let listeners = CoreListeners { service, operator };
        let (core_addr, operator_addr) = listeners.addrs().expect("core addrs");
        let (stop, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let core = Core::open(core_config).await.expect("core opens");
        let mut tasks: Vec<(&'static str, JoinHandle<Result<(), String>>)> = Vec::new();
        let core_stop = stopped();
        tasks.push((
            "core",
            tokio::spawn(async move {
                core.serve(listeners, core_stop)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let edge_listener = TcpListener::bind(loopback).await.expect("bind edge");
        let edge_addr = edge_listener.local_addr().expect("edge addr");
        let edge_grpc_listener = TcpListener::bind(loopback).await.expect("bind edge gRPC");
        let edge_grpc_addr = edge_grpc_listener.local_addr().expect("edge gRPC addr");
        let mut edge_config = EdgeConfig {
            listen: edge_addr,
            core_url: format!("http://{core_addr}"),
            base_url: format!("http://{edge_addr}"),
            ..Default::default()
        };
        (self.edge)(&mut edge_config);
        let edge_stop = stopped();
        tasks.push((
            "edge",
            tokio::spawn(async move {
                nems_edge::run_with_grpc(
                    edge_config,
                    edge_listener,
                    Some(edge_grpc_listener),
                    edge_stop,
                )
                .await
                .map_err(|e| e.to_string())
            }),
        ));

        let outbox = data_dir.join("outbox");
        let mut adapter_config = AdapterConfig {
            core_url: format!("http://{core_addr}"),
            folder: outbox.clone(),
            retry_initial: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(1),
            ..Default::default()
        };
        let start_adapter = match &self.sink {
            Sink::Folder => true,
            Sink::None => false,
            Sink::Mesh {
                base_url,
                mailbox,
                password,
            } => {
                adapter_config.sink = SinkKind::Mesh;
                adapter_config.mesh.base_url.clone_from(base_url);
                adapter_config.mesh.mailbox.clone_from(mailbox);
                adapter_config.mesh.password.clone_from(password);
                adapter_config.mesh.shared_key = "TestKey".into();
                adapter_config.mesh.request_timeout = Duration::from_secs(5);
                adapter_config.mesh.report_poll_interval = Duration::from_millis(200);
                true
            }
        };
        (self.adapter)(&mut adapter_config);
        let adapter = (start_adapter && !self.adapter_stopped)
            .then(|| AdapterHandle::spawn(adapter_config.clone()));
        TestStack {
            core_addr,
            operator_addr,
            edge_addr,
            edge_grpc_addr,
            data_dir,
            outbox,
            http: HttpClient::new(edge_addr),
            stop,
            tasks,
            adapter,
            adapter_config: start_adapter.then_some(adapter_config),
            _temp: temp,
        }
    }
}

// === AdapterHandle ===

impl AdapterHandle {
    /// Starts an adapter with `config` (any core, e.g. one running as a child process).
    pub fn spawn(config: AdapterConfig) -> Self {
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            nems_mesh_adapter::run(config, stopped)
                .await
                .map_err(|e| e.to_string())
        });
        Self { stop, task }
    }

    /// Stops the adapter gracefully (in-flight sends finish) and fails the test on an error
    /// or panic.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("mesh-adapter failed: {e}"),
            Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
            Err(_) => panic!("mesh-adapter did not stop within 30 s"),
        }
    }

    /// Kills the adapter as a crash would: its task is aborted wherever it is (mid-send
    /// included), nothing is reported to core, and its leases are left to expire.
    pub async fn kill(self) {
        self.task.abort();
        match self.task.await {
            Err(join) if join.is_cancelled() => {}
            Err(join) => std::panic::resume_unwind(join.into_panic()),
            Ok(_) => {}
        }
    }
}
