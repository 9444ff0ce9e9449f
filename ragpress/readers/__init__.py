"""The reader stage: an LLM answers from the (compressed) context.

* ``local``: a causal LM through transformers (text or soft tokens via ``inputs_embeds``);
* ``openai``: any OpenAI-compatible server (vLLM, TGI, llama.cpp server, a hosted API, ragpress).

>>> from ragpress.readers import create_reader                                   # doctest: +SKIP
>>> create_reader("local").read("Who founded Acme?", "Acme was founded by Jane Roe.").text  # doctest: +SKIP
"""

from ragpress.readers.base import Answer, Context, Prompt, Reader, ReaderConfig, SoftContext
from ragpress.readers.prompts import PromptTemplate, get_template, register_template, render_messages
from ragpress.readers.registry import available_readers, create_reader, get_reader_class, register_reader

__all__ = [
    "Answer", "Context", "Prompt", "PromptTemplate", "Reader", "ReaderConfig", "SoftContext",
    "available_readers", "create_reader", "get_reader_class", "get_template", "register_reader",
    "register_template", "render_messages",
]
