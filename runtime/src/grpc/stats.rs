//! Triton's model configuration and statistics extension as protobuf messages, and the statistics
//! as Triton's HTTP JSON (`GET /v2/models[/{m}]/stats`): one source for both protocols, built
//! from the same counters `/metrics` shows.

use serde_json::{Value, json};

use super::generated::{
    DataType, InferBatchStatistics, InferStatistics, ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup,
    ModelOutput, ModelStatistics, ModelTransactionPolicy, StatisticDuration, model_input, model_instance_group,
};
use crate::model::Model;

/// The model's configuration as the HTTP route shows it, in protobuf form.
pub(crate) fn model_config(model: &Model) -> ModelConfig {
    let c = crate::routes::v2::config(model);
    let data_type = |name: &str| DataType::from_str_name(name).unwrap_or(DataType::TypeInvalid) as i32;
    ModelConfig {
        name: c.name,
        platform: c.platform,
        backend: c.backend,
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input: c
            .input
            .into_iter()
            .map(|t| ModelInput {
                name: t.name,
                data_type: data_type(&t.data_type),
                format: model_input::Format::None as i32,
                dims: t.dims,
                is_shape_tensor: false,
                optional: false,
            })
            .collect(),
        output: c
            .output
            .into_iter()
            .map(|t| ModelOutput {
                name: t.name,
                data_type: data_type(&t.data_type),
                dims: t.dims,
                label_filename: String::new(),
                is_shape_tensor: false,
            })
            .collect(),
        instance_group: vec![ModelInstanceGroup {
            name: model.name().to_string(),
            count: i32::try_from(model.instances()).unwrap_or(i32::MAX),
            kind: model_instance_group::Kind::Cpu as i32,
        }],
        dynamic_batching: c.dynamic_batching.map(|b| ModelDynamicBatching {
            preferred_batch_size: b
                .preferred_batch_size
                .iter()
                .map(|&n| i32::try_from(n).unwrap_or(i32::MAX))
                .collect(),
            max_queue_delay_microseconds: b.max_queue_delay_microseconds,
            preserve_ordering: false,
        }),
        model_transaction_policy: Some(ModelTransactionPolicy { decoupled: false }),
    }
}

/// The model's statistics: request counts from the same counters as `nv_inference_request_*`,
/// items and executions from `nv_inference_count` and `nv_inference_exec_count`. nimify does not
/// time tensor conversion apart from the run, so `compute_input` and `compute_output` are zero
/// and `compute_infer` holds the whole execution; there is no response cache.
pub(crate) fn model_statistics(model: &Model) -> ModelStatistics {
    let m = model.metrics();
    let s = m.stats.snapshot();
    let d = |count: u64, ns: u64| Some(StatisticDuration { count, ns });
    ModelStatistics {
        name: model.name().to_string(),
        version: model.version().to_string(),
        last_inference: s.last_inference_ms,
        inference_count: m.count.get(),
        execution_count: m.exec_count.get(),
        inference_stats: Some(InferStatistics {
            success: d(m.success.get(), s.success_ns),
            fail: d(m.failure.get(), s.fail_ns),
            queue: d(s.queue_count, s.queue_ns),
            compute_input: d(s.compute_count, 0),
            compute_infer: d(s.compute_count, s.compute_ns),
            compute_output: d(s.compute_count, 0),
            cache_hit: d(0, 0),
            cache_miss: d(0, 0),
        }),
        batch_stats: s
            .batches
            .into_iter()
            .map(|(batch_size, count, ns)| InferBatchStatistics {
                batch_size,
                compute_input: d(count, 0),
                compute_infer: d(count, ns),
                compute_output: d(count, 0),
            })
            .collect(),
    }
}

/// Statistics as Triton's HTTP statistics extension spells them.
pub(crate) fn statistics_json(stats: &[ModelStatistics]) -> Value {
    fn duration(d: Option<&StatisticDuration>) -> Value {
        let d = d.copied().unwrap_or_default();
        json!({ "count": d.count, "ns": d.ns })
    }
    let models: Vec<Value> = stats
        .iter()
        .map(|s| {
            let i = s.inference_stats.unwrap_or_default();
            json!({
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(i.success.as_ref()),
                    "fail": duration(i.fail.as_ref()),
                    "queue": duration(i.queue.as_ref()),
                    "compute_input": duration(i.compute_input.as_ref()),
                    "compute_infer": duration(i.compute_infer.as_ref()),
                    "compute_output": duration(i.compute_output.as_ref()),
                    "cache_hit": duration(i.cache_hit.as_ref()),
                    "cache_miss": duration(i.cache_miss.as_ref()),
                },
                "batch_stats": s.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": duration(b.compute_input.as_ref()),
                    "compute_infer": duration(b.compute_infer.as_ref()),
                    "compute_output": duration(b.compute_output.as_ref()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "model_stats": models })
}
