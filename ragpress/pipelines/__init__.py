"""In-process pipelines: retrieve -> compress (-> read)."""

from ragpress.pipelines.rag import PipelineResult, RagPipeline
from ragpress.pipelines.sample import SAMPLE_CORPUS, SAMPLE_QUESTION, ensure_sample_index

__all__ = ["PipelineResult", "RagPipeline", "SAMPLE_CORPUS", "SAMPLE_QUESTION", "ensure_sample_index"]
