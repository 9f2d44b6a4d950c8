"""convfocus.training"""
