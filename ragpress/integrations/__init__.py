"""Framework integrations: LangChain (:mod:`.langchain`), LlamaIndex (:mod:`.llamaindex`, extra
``ragpress[llamaindex]``) and Haystack (:mod:`.haystack`, extra ``ragpress[haystack]``), all three
over one engine (:mod:`.engine`: in process or remote, sync or async) and one document adapter
(:mod:`.adapter`). Importing this package imports none of the frameworks."""
