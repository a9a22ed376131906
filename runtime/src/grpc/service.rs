//! `inference.GRPCInferenceService`: each RPC translates its message and calls what the HTTP
//! routes call (model lookup, metadata, configuration, statistics, the inference path), so both
//! protocols answer the same and count in the same metrics.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use super::generated::grpc_inference_service_server::GrpcInferenceService;
use super::generated::*;
use super::status::to_status;
use crate::error::ApiError;
use crate::model::Model;
use crate::server::AppState;

/// Requests of one `ModelStreamInfer` call running at once; their answers still go out in
/// request order.
const STREAM_CONCURRENCY: usize = 64;

/// The service, over the server's shared state.
#[derive(Debug, Clone)]
pub(crate) struct Inference {
    pub state: Arc<AppState>,
}

/// What each message's audit line of a stream repeats from its call.
#[derive(Debug)]
struct AuditCall {
    request_id: Arc<str>,
    client: Option<String>,
    key: Option<Arc<str>>,
}

/// The audit line of one stream message, written when it is dropped: with the message's gRPC
/// code once it is answered, or CANCELLED (1) when the stream goes away while it runs.
struct MessageAudit {
    state: Arc<AppState>,
    call: Arc<AuditCall>,
    seq: u64,
    model: String,
    version: String,
    start: std::time::Instant,
    code: Option<i64>,
}

impl Drop for MessageAudit {
    fn drop(&mut self) {
        let Some(audit) = self.state.audit() else { return };
        let code = self.code.unwrap_or(tonic::Code::Cancelled as i64);
        let trace = crate::telemetry::ids(&tracing::Span::current());
        audit.record(&crate::audit::Entry {
            request_id: &self.call.request_id,
            trace_id: trace.as_ref().map(|t| t.0.as_str()),
            api_key: self.call.key.as_deref(),
            client: self.call.client.as_deref(),
            protocol: "grpc",
            operation: "inference.GRPCInferenceService/ModelStreamInfer",
            message: Some(self.seq),
            model: Some(&self.model),
            version: Some(self.version.as_str()).filter(|v| !v.is_empty()),
            outcome: crate::audit::outcome_of_grpc(code),
            status: code,
            micros: self.start.elapsed().as_micros() as u64,
        });
    }
}

/// A model named by a request; an empty version is the served one.
fn lookup(state: &AppState, name: &str, version: &str) -> Result<Arc<Model>, Status> {
    let version = (!version.is_empty()).then_some(version);
    state.model(name, version).map_err(|e| to_status(&e))
}

/// The call's deadline from `grpc-timeout`, measured from the call's start (see
/// [`super::CallDeadline`]).
fn call_deadline<T>(request: &Request<T>) -> Option<crate::inference::Deadline> {
    request.extensions().get::<super::CallDeadline>().and_then(|d| d.0)
}

/// Leaves the model a message names where the call's audit line finds it (audit log on).
fn note_model<T>(request: &Request<T>, name: &str, version: &str) {
    if let Some(slot) = request.extensions().get::<super::CallModel>() {
        let _ = slot.0.set((name.to_string(), version.to_string()));
    }
}

/// The call's request id (`x-request-id`, set or kept by the router).
fn request_id<T>(request: &Request<T>) -> String {
    crate::server::request_id(request.metadata().as_ref())
}

/// One inference, as HTTP runs it: counted for the model, bounded by the request deadline and
/// (when shorter) the call's own. With payload logging on, a sampled request and its answer are
/// sent as events with id `event_id`.
async fn infer_one(
    state: &AppState,
    request: ModelInferRequest,
    deadline: Option<crate::inference::Deadline>,
    event_id: &str,
) -> Result<ModelInferResponse, ApiError> {
    let version = (!request.model_version.is_empty()).then(|| request.model_version.clone());
    let model = state.model(&request.model_name, version.as_deref())?;
    let payload_log = state.payload_log().filter(|log| log.sampled());
    if let Some(log) = payload_log {
        log.message("request", event_id, model.name(), "inference.ModelInferRequest", || request.encode_to_vec());
    }
    let work = async {
        let decoded = crate::__trace_span!("decode").in_scope(|| super::tensors::decode(&model, request))?;
        let outputs = crate::inference::infer(&model, decoded.inputs, decoded.outputs).await?;
        Ok(crate::__trace_span!("encode").in_scope(|| super::tensors::encode(&model, decoded.id, outputs)))
    };
    let answer = crate::inference::run_until(state, &model, crate::inference::Protocol::Grpc, deadline, work).await;
    if let (Some(log), Ok(response)) = (payload_log, &answer) {
        log.message("response", event_id, model.name(), "inference.ModelInferResponse", || response.encode_to_vec());
    }
    answer
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.state.is_ready() }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = r.into_inner();
        // While the models load, no model is ready (rather than unknown).
        if self.state.is_starting() {
            return Ok(Response::new(ModelReadyResponse { ready: false }));
        }
        lookup(&self.state, &r.name, &r.version)?;
        Ok(Response::new(ModelReadyResponse { ready: self.state.is_ready() }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let m = crate::routes::v2::server_metadata_body();
        Ok(Response::new(ServerMetadataResponse { name: m.name, version: m.version, extensions: m.extensions }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        note_model(&r, &r.get_ref().name, &r.get_ref().version);
        let r = r.into_inner();
        let m = crate::routes::v2::metadata(&self.state, lookup(&self.state, &r.name, &r.version)?.as_ref());
        let tensors = |ts: Vec<crate::v2::types::MetadataTensor>| {
            ts.into_iter()
                .map(|t| model_metadata_response::TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = call_deadline(&r);
        let id = request_id(&r);
        note_model(&r, &r.get_ref().model_name, &r.get_ref().model_version);
        infer_one(&self.state, r.into_inner(), deadline, &id).await.map(Response::new).map_err(|e| to_status(&e))
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

    /// Each request on the stream is its own inference (in-flight place, deadline, metrics,
    /// queue); up to [`STREAM_CONCURRENCY`] run at once and the answers keep request order. A
    /// failed request is an answer with `error_message` (and the request's id, as Triton sends
    /// it), and the stream goes on; a message that does not decode ends the call with its
    /// status. When the server drains, the stream takes no new message and ends once the ones
    /// it has are answered.
    async fn model_stream_infer(
        &self,
        r: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let call_deadline = call_deadline(&r);
        let call_id: Arc<str> = request_id(&r).into();
        let audit_call = self.state.audit().map(|_| {
            Arc::new(AuditCall {
                request_id: Arc::clone(&call_id),
                client: crate::audit::client_of(r.extensions()),
                key: r.extensions().get::<crate::inference::admission::KeyName>().map(|k| Arc::clone(&k.0)),
            })
        });
        let mut seq = 0u64;
        let state = Arc::clone(&self.state);
        let mut draining = state.draining();
        let drained = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        let messages = futures_util::StreamExt::take_until(r.into_inner(), Box::pin(drained));
        // Messages are answered while the response streams, after the call's handler returned:
        // each runs under the call's span, so its spans join the call's trace.
        let call = tracing::Span::current();
        let answers = futures_util::StreamExt::map(messages, move |message| {
            let state = Arc::clone(&state);
            seq += 1;
            let (seq, call_id, audit_call) = (seq, Arc::clone(&call_id), audit_call.clone());
            let span =
                if crate::telemetry::enabled() { tracing::error_span!(parent: &call, "message") } else { call.clone() };
            let answer = async move {
                let request = message?;
                let id = request.id.clone();
                let model = request.model_name.clone();
                let mut audit = audit_call.map(|call| MessageAudit {
                    state: Arc::clone(&state),
                    call,
                    seq,
                    model: model.clone(),
                    version: request.model_version.clone(),
                    start: std::time::Instant::now(),
                    code: None,
                });
                let answer = match state.admit_slot(&model) {
                    Ok(_admitted) => infer_one(&state, request, call_deadline, &format!("{call_id}/{seq}")).await,
                    Err(e) => Err(e),
                };
                let (code, answer) = match answer {
                    Ok(response) => {
                        (0, ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) })
                    }
                    Err(e) => {
                        let status = to_status(&e);
                        (
                            status.code() as i64,
                            ModelStreamInferResponse {
                                error_message: status.message().to_string(),
                                infer_response: Some(ModelInferResponse {
                                    model_name: model,
                                    id,
                                    ..Default::default()
                                }),
                            },
                        )
                    }
                };
                if let Some(audit) = &mut audit {
                    audit.code = Some(code);
                }
                Ok(answer)
            };
            tracing::Instrument::instrument(answer, span)
        });
        let ordered = futures_util::StreamExt::buffered(answers, STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(ordered)))
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Result<Response<ModelConfigResponse>, Status> {
        note_model(&r, &r.get_ref().name, &r.get_ref().version);
        let r = r.into_inner();
        let model = lookup(&self.state, &r.name, &r.version)?;
        Ok(Response::new(ModelConfigResponse { config: Some(super::stats::model_config(&model)) }))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        if !r.get_ref().name.is_empty() {
            note_model(&r, &r.get_ref().name, &r.get_ref().version);
        }
        let r = r.into_inner();
        let model_stats = if r.name.is_empty() {
            self.state.models().iter().map(|m| super::stats::model_statistics(m)).collect()
        } else {
            vec![super::stats::model_statistics(lookup(&self.state, &r.name, &r.version)?.as_ref())]
        };
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let r = r.into_inner();
        crate::repository::api::check_repository_name(&self.state, &r.repository_name).map_err(|e| to_status(&e))?;
        let entries =
            crate::repository::api::index(Arc::clone(&self.state), r.ready).await.map_err(|e| to_status(&e))?;
        let models = entries
            .into_iter()
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.as_str().to_string(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let r = r.into_inner();
        let api = |e: crate::error::ApiError| to_status(&e);
        crate::repository::api::check_repository_name(&self.state, &r.repository_name).map_err(api)?;
        crate::repository::api::check_parameters(r.parameters.keys().map(String::as_str), &[]).map_err(api)?;
        crate::repository::api::load(Arc::clone(&self.state), r.model_name).await.map_err(api)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let r = r.into_inner();
        let api = |e: crate::error::ApiError| to_status(&e);
        crate::repository::api::check_repository_name(&self.state, &r.repository_name).map_err(api)?;
        crate::repository::api::check_parameters(r.parameters.keys().map(String::as_str), &["unload_dependents"])
            .map_err(api)?;
        crate::repository::api::unload(Arc::clone(&self.state), r.model_name).await.map_err(api)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        Err(shared_memory())
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        Err(shared_memory())
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        Err(shared_memory())
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        Err(shared_memory())
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        Err(shared_memory())
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        Err(shared_memory())
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Result<Response<TraceSettingResponse>, Status> {
        Err(unsupported("trace settings", "tracing is configured when it starts"))
    }

    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Result<Response<LogSettingsResponse>, Status> {
        Err(unsupported("log settings", "its log level is set by RUST_LOG when it starts"))
    }
}

fn unsupported(what: &str, why: &str) -> Status {
    Status::unimplemented(format!("nimify does not support {what}: {why}"))
}

fn shared_memory() -> Status {
    unsupported(
        "shared-memory regions",
        "send tensors in the request (raw_input_contents) and read them from the response",
    )
}
