"""POST /tokenize and /detokenize, in vLLM's shapes: a prompt or chat messages -> token ids, and back.

/tokenize with `messages` runs the same road as a chat request (template, media, processor), so its count is exactly
what a chat request with those messages would use as prompt tokens, image placeholders included.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from glmv.server.chat import prompt_for
from glmv.server.errors import OPENAPI_ERRORS
from glmv.server.params import check_token_ids, resolve_model_name
from glmv.server.protocol import (
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from glmv.server.state import ServingState

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse, responses=OPENAPI_ERRORS,
             summary="Token ids of a prompt, or of chat messages after the chat template")
async def tokenize(req: TokenizeCompletionRequest | TokenizeChatRequest, raw: Request) -> TokenizeResponse:
    state: ServingState = raw.app.state.serving
    resolve_model_name(state, req.model)
    if isinstance(req, TokenizeChatRequest):
        chat = ChatCompletionRequest(
            messages=req.messages, add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message, chat_template_kwargs=req.chat_template_kwargs,
            mm_processor_kwargs=req.mm_processor_kwargs, media_io_kwargs=req.media_io_kwargs,
        )
        ids = list((await prompt_for(chat, state)).token_ids)
    else:
        ids = list(state.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
    strs = state.tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=OPENAPI_ERRORS,
             summary="Text of token ids")
async def detokenize(req: DetokenizeRequest, raw: Request) -> DetokenizeResponse:
    state: ServingState = raw.app.state.serving
    resolve_model_name(state, req.model)
    check_token_ids(state, req.tokens, "tokens")
    return DetokenizeResponse(prompt=state.tokenizer.decode(req.tokens))
